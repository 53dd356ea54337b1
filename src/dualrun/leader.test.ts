import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { describe, expect, it, vi } from 'vitest';
import { ServerError } from '../errors.js';
import { MemoryTarget } from '../stores/memory.js';
import { LEADER_TTL_SECONDS, LeaderLock, processAlive } from './leader.js';

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

describe('LeaderLock.keepAlive', () => {
  it('with `unconfirmed` (--ha), steps down once Consul has not confirmed the session for its TTL (cut off: a standby may lead by then); always when Consul no longer knows it', async () => {
    vi.useFakeTimers();
    try {
      const target = new MemoryTarget();
      const lock = new LeaderLock(target, '_migrate/m/leader', 'host:1');
      await lock.acquire({ wait: false, signal: new AbortController().signal });
      const lost: string[] = [];
      lock.keepAlive((why) => lost.push(why), { unconfirmed: true });
      // Renewed every third of the TTL: nothing lost however long it runs.
      await vi.advanceTimersByTimeAsync(60_000);
      expect(lost).toEqual([]);
      // Cut off: each renewal hangs (a black hole); the lock is given up a TTL after the last confirmed one, not when Consul answers again.
      target.renewSession = () => new Promise(() => undefined);
      await vi.advanceTimersByTimeAsync(LEADER_TTL_SECONDS * 1000);
      expect(lost).toEqual([]);
      await vi.advanceTimersByTimeAsync(LEADER_TTL_SECONDS * 1000);
      expect(lost).toEqual(['unconfirmed']);
      expect(await lock.held()).toBe(false);
      await lock.release();

      // Alone (no --ha), it leads on through the outage: nobody else would, and its lag says what it is behind.
      const alone = new LeaderLock(target, '_migrate/m/leader', 'host:1');
      target.renewSession = async () => true;
      await alone.acquire({ wait: false, signal: new AbortController().signal });
      const lostAlone: string[] = [];
      alone.keepAlive((why) => lostAlone.push(why));
      target.renewSession = () => new Promise(() => undefined);
      await vi.advanceTimersByTimeAsync(60_000);
      expect(lostAlone).toEqual([]);
      await alone.release();

      const again = new LeaderLock(target, '_migrate/m/leader', 'host:1');
      target.renewSession = async () => true;
      await again.acquire({ wait: false, signal: new AbortController().signal });
      const lostAgain: string[] = [];
      again.keepAlive((why) => lostAgain.push(why));
      // Consul answers that it no longer knows the session (404): lost at the next renewal.
      target.renewSession = async () => false;
      await vi.advanceTimersByTimeAsync(LEADER_TTL_SECONDS * 1000);
      expect(lostAgain).toEqual(['expired']);
      await again.release();
    } finally {
      vi.useRealTimers();
    }
  });
});

describe('processAlive', () => {
  it('a process that died and is not reaped yet (a zombie, under a supervisor that reaps late) is not alive; a running one is', async () => {
    // The shell's `sleep 1` child becomes a child of `sleep 10`, which never reaps it. It ends after the exec
    // (a child that ended before it, on a loaded machine, the shell itself reaped: no zombie to look at).
    const parent = spawn('sh', ['-c', 'sleep 1 & echo $!; exec sleep 10'], { stdio: ['ignore', 'pipe', 'ignore'] });
    try {
      const [line] = (await once(parent.stdout!, 'data')) as [Buffer];
      const zombie = Number(line.toString().trim());
      const deadline = Date.now() + 6000;
      while (processAlive(zombie) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      expect(processAlive(zombie)).toBe(false);
      // It is a zombie, not gone: kill(pid, 0) alone still finds it.
      expect(readFileSync(`/proc/${zombie}/stat`, 'latin1')).toMatch(/\) Z /);
      expect(() => process.kill(zombie, 0)).not.toThrow();
      expect(processAlive(parent.pid!)).toBe(true);
      expect(processAlive(process.pid)).toBe(true);
    } finally {
      parent.kill('SIGKILL');
    }
  });
});
