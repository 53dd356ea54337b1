import { createHmac, randomBytes } from 'node:crypto';

/**
 * Short keyed hashes of values (DESIGN §4): HMAC-SHA-256 with a random key
 * made for one run, so equal values can be matched inside one report without
 * revealing low-entropy values (a plain hash of "true" is a lookup away).
 */
export type ValueHasher = (value: Buffer) => string;

export function createValueHasher(key: Buffer = randomBytes(32)): ValueHasher {
  return (value) => createHmac('sha256', key).update(value).digest('hex').slice(0, 16);
}
