import { describe, expect, it } from 'vitest';
import { oneAtATime } from './one-at-a-time.js';

describe('oneAtATime', () => {
  it('runs a call made while another runs after it, never alongside it, in the order called', async () => {
    const log: string[] = [];
    let n = 0;
    const run = oneAtATime(async () => {
      const id = ++n;
      log.push(`start ${id}`);
      await new Promise((r) => setTimeout(r, 20));
      log.push(`end ${id}`);
    });
    await Promise.all([run(), run(), run()]);
    expect(log).toEqual(['start 1', 'end 1', 'start 2', 'end 2', 'start 3', 'end 3']);
  });

  it('a call that fails rejects its caller and does not hold back the next', async () => {
    let calls = 0;
    const run = oneAtATime(async () => {
      calls++;
      if (calls === 1) throw new Error('first fails');
    });
    const first = run();
    const second = run();
    await expect(first).rejects.toThrow('first fails');
    await expect(second).resolves.toBeUndefined();
    expect(calls).toBe(2);
  });
});
