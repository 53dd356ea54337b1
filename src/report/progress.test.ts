import { describe, expect, it } from 'vitest';
import { plainProgressLine } from './progress.js';

describe('plainProgressLine', () => {
  const startedAt = 1_000_000;
  it('gives the bytes of work that counts them (copy)', () => {
    const line = plainProgressLine({ title: 'copying', items: [{ name: 'a', total: 400, done: 100, bytes: 3 * 1048576 }, { name: 'b', total: 100, done: 100, bytes: 1048576 }], retries: 2, startedAt }, startedAt + 2_000);
    expect(line).toBe('copying: 200/500 keys, 4.0 MiB, 100 keys/s, ETA 3s, 2 retries');
  });

  it('leaves bytes out of work that does not count them (audit, plan, verify), instead of saying 0.0 MiB', () => {
    const line = plainProgressLine({ title: 'auditing', items: [{ name: 'keys', total: 500, done: 250 }], retries: 0, startedAt }, startedAt + 5_000);
    expect(line).toBe('auditing: 250/500 keys, 50 keys/s, ETA 5s');
  });
});
