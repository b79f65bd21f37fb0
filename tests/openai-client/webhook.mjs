// Verifies deliveries the service sent with the official client's webhook verification (client.webhooks.unwrap).
// Usage: node webhook.mjs <captured.json>, a list of {secret, body, headers} as the receiver got them.
// Prints each event's type and data.id; exits non-zero if one does not verify or a tampered copy does.
import { readFileSync } from 'node:fs';
import OpenAI, { InvalidWebhookSignatureError } from 'openai';

const client = new OpenAI({ apiKey: 'unused' });
const captured = JSON.parse(readFileSync(process.argv[2], 'utf8'));
if (captured.length === 0) throw new Error('no deliveries to verify');
for (const { secret, body, headers } of captured) {
  const event = await client.webhooks.unwrap(body, headers, secret);
  console.log(`verified ${event.type} ${event.data.id} ${event.id}`);
  for (const [what, payload, hdrs, key] of [
    ['a changed body', body.replace(event.data.id, event.data.id + 'x'), headers, secret],
    ['another secret', body, headers, 'whsec_' + Buffer.alloc(32, 7).toString('base64')],
    ['another webhook-id', body, { ...headers, 'webhook-id': headers['webhook-id'] + 'x' }, secret],
  ]) {
    try {
      await client.webhooks.unwrap(payload, hdrs, key);
    } catch (e) {
      if (e instanceof InvalidWebhookSignatureError) continue;
      throw e;
    }
    throw new Error(`${what} verified too`);
  }
}
console.log('every webhook verified');
