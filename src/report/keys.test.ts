import { describe, expect, it } from 'vitest';
import { clipKey, formatKey } from './keys.js';

describe('clipKey', () => {
  it('leaves a key of up to 200 characters whole', () => {
    const key = `/app/${'a'.repeat(195)}`;
    expect(clipKey(key)).toBe(key);
  });

  it('shows a long key\'s start and its length, not the whole key', () => {
    const shown = clipKey(`/app/${'L'.repeat(300_000)}`);
    expect(shown.length).toBeLessThan(220);
    expect(shown).toMatch(/^\/app\/L+… \(300,005 characters, whole in --format json\)$/);
  });

  it('does not cut an escape or a character in two', () => {
    // Each \xNN escape is 4 characters: wherever the cut falls, no partial escape is left before the "…".
    for (let pad = 0; pad < 4; pad++) {
      const shown = clipKey(formatKey(Buffer.concat([Buffer.from('/b/'.padEnd(3 + pad, 'x')), Buffer.alloc(400, 0xff)])));
      expect(shown).toMatch(/^\/b\/x*(\\xff)*… /);
    }
    // A character outside the BMP is two UTF-16 units: never one of them alone.
    const emoji = clipKey(`/e/${'😀'.repeat(300)}`);
    expect(emoji.slice(0, emoji.indexOf('…'))).toMatch(/^\/e\/(😀)+$/u);
  });
});
