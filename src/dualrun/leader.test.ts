import { describe, expect, it } from 'vitest';
import { ServerError } from '../errors.js';
import { MemoryTarget } from '../stores/memory.js';
import { LeaderLock } from './leader.js';

/** A target whose next `failures` session creations fail as an unreachable Consul does. */
function flaky(failures: number): { target: MemoryTarget; fail: (n: number) => void } {
  const target = new MemoryTarget();
  const create = target.createSession.bind(target);
  target.createSession = async (spec) => {
    if (failures-- > 0) throw new ServerError('consul_unreachable', 'Consul at memory is unreachable (ECONNREFUSED).');
    return create(spec);
  };
  return { target, fail: (n) => (failures = n) };
}

const transient = (err: unknown) => err instanceof ServerError;

describe('LeaderLock.acquire', () => {
  it('a standby (wait) rides out a Consul that does not answer, says so, and takes the lock once it answers', async () => {
    const { target } = flaky(2);
    const unavailable: unknown[] = [];
    const lock = new LeaderLock(target, '_migrate/m/leader', 'host:1');
    expect(await lock.acquire({ wait: true, signal: new AbortController().signal, transient, onUnavailable: (err) => unavailable.push(err) })).toBe(true);
    expect(unavailable).toHaveLength(2);
    expect(target.entries.get('_migrate/m/leader')?.session).toBe(lock.session);
  });

  it('a start that does not wait (no --ha) fails at once, and an error that will not pass fails a standby too', async () => {
    const { target, fail } = flaky(1);
    const signal = new AbortController().signal;
    await expect(new LeaderLock(target, '_migrate/m/leader', 'host:1').acquire({ wait: false, signal, transient })).rejects.toMatchObject({ code: 'consul_unreachable' });
    fail(1);
    await expect(new LeaderLock(target, '_migrate/m/leader', 'host:1').acquire({ wait: true, signal, transient: () => false })).rejects.toMatchObject({ code: 'consul_unreachable' });
  });
});
