import { existsSync, readFileSync } from 'node:fs';
import { RefusedError } from '../errors.js';
import { sleep } from '../stores/consul-http.js';
import type { TargetStore } from '../stores/types.js';

/** Whether process `pid` of this host still runs: a zombie (dead, not yet reaped by its parent) does not. */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  // Without /proc (not Linux), what kill said.
  if (!HAS_PROC) return true;
  try {
    // /proc/<pid>/stat: "pid (comm) state …"; comm may hold spaces and parentheses, the state follows the last ")".
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ENOENT';
  }
}

const HAS_PROC = existsSync('/proc/self/stat');

/**
 * Whether a lock's `holder` (`host:pid`) is a process of host `here` that is gone,
 * or is this very pid in an earlier incarnation (pid 1 in a container): its lock
 * is dead, though its session lives on until its TTL. Holders of other hosts never are.
 */
export function diedHere(holder: string | undefined, here: string): boolean {
  const [host, pidText] = (holder ?? '').split(':');
  const pid = Number(pidText);
  if (host !== here || !Number.isInteger(pid)) return false;
  return pid === process.pid || !processAlive(pid);
}

/** The `holder` (`host:pid`) a lock's value names; undefined for a value the tool did not write (the lock is still held). */
export function lockHolder(value: Buffer): string | undefined {
  try {
    return (JSON.parse(value.toString('utf8')) as { holder?: string }).holder;
  } catch {
    return undefined;
  }
}

/** TTL of the leader's session: a standby takes over within about 2× this after the leader dies. */
export const LEADER_TTL_SECONDS = 10;

/**
 * The dual-run leader lock: a Consul session (LockDelay 0s, Behavior delete)
 * holding `_migrate/<id>/leader`. Every apply txn checks it (`check-session`),
 * so a paused former leader cannot write after a takeover.
 */
export class LeaderLock {
  session: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private lost = false;

  constructor(
    private readonly target: TargetStore,
    private readonly key: string,
    private readonly holder: string,
    /** What the lock is, in its Consul session's name. */
    private readonly purpose = 'dual-run leader',
  ) {}

  /**
   * Takes the lock; with `wait`, keeps trying (standby) until it is free or
   * `signal` aborts, and rides out errors `transient` says will pass (Consul
   * restarting), said through `onUnavailable`.
   */
  async acquire(options: { wait: boolean; signal: AbortSignal; onWaiting?: (holder: string) => void; transient?: (err: unknown) => boolean; onUnavailable?: (err: unknown) => void; onAnswered?: () => void }): Promise<boolean> {
    this.announced = false;
    for (;;) {
      try {
        return await this.tryAcquire(options);
      } catch (err) {
        if (!options.wait || !options.transient?.(err)) throw err;
        options.onUnavailable?.(err);
        await sleep(1000, options.signal);
        if (options.signal.aborted) return false;
      }
    }
  }

  private announced = false;

  private async tryAcquire(options: { wait: boolean; signal: AbortSignal; onWaiting?: (holder: string) => void; onAnswered?: () => void }): Promise<boolean> {
    for (;;) {
      this.session ??= await this.target.createSession({ name: `migrate ${this.purpose} (${this.holder})`, ttlSeconds: LEADER_TTL_SECONDS });
      const body = Buffer.from(JSON.stringify({ schemaVersion: 1, holder: this.holder, since: new Date().toISOString() }));
      let acquired = false;
      try {
        acquired = await this.target.putKey(this.key, body, { acquire: this.session });
      } catch (err) {
        // Our session expired while we waited: make a new one next time round.
        if ((err as { code?: string }).code !== 'consul_session_invalid') throw err;
        this.session = undefined;
      }
      if (acquired) {
        this.lost = false;
        return true;
      }
      const found = await this.inspect();
      options.onAnswered?.();
      // Released between our attempt and the read, or its dead holder cleared: try again at once.
      if (found.state !== 'held') continue;
      if (!options.wait) {
        await this.release();
        throw new RefusedError('dualrun_locked', `Another dual-run holds the leader lock of this migration (${found.holder}).`, {
          hint: 'Stop the other dual-run, or run replicas with --ha so that this one waits as a standby.',
          details: { holder: found.holder },
        });
      }
      if (!this.announced) {
        options.onWaiting?.(found.holder);
        this.announced = true;
      }
      if (this.session) await this.target.renewSession(this.session).catch(() => undefined);
      await sleep(1000, options.signal);
      if (options.signal.aborted) return false;
    }
  }

  /**
   * A lock left by a dual-run that died on this host (SIGKILL, OOM, a restarted
   * container) would otherwise block a restart until its session expires. Its
   * holder is known (`host:pid` in the lock's value): when that process is gone,
   * or is this very pid in an earlier incarnation (pid 1 in a container), the
   * dead holder's session is destroyed. Holders on other hosts are never touched.
   * Says whether the lock is free, was cleared, or is held (and by whom).
   */
  private async inspect(): Promise<{ state: 'free' | 'cleared' } | { state: 'held'; holder: string }> {
    const entry = await this.target.readKey(this.key);
    if (!entry?.session) return { state: 'free' };
    const holder = lockHolder(entry.value);
    const held = { state: 'held' as const, holder: holder ?? 'unknown holder' };
    if (entry.session === this.session) return held;
    if (!diedHere(holder, this.holder.split(':')[0]!)) return held;
    await this.target.destroySession(entry.session);
    return { state: 'cleared' };
  }

  /** Whether Consul says this process holds the lock now (a read: not what the last renewal said). */
  async held(): Promise<boolean> {
    if (this.lost || !this.session) return false;
    return (await this.target.readKey(this.key))?.session === this.session;
  }

  /**
   * Renews the session every third of its TTL; `onLost` when Consul no longer
   * knows it. With `unconfirmed` (the dual-run's --ha), also when no renewal has
   * been confirmed for a whole TTL: Consul may have reaped the session by then
   * and a standby may lead, so a process cut off from Consul stops calling itself
   * leader rather than waiting to hear it (its writes were fenced by the lock
   * check either way). Alone, a dual-run leads on through an outage and says
   * what it is behind.
   */
  keepAlive(onLost: (why: 'expired' | 'unconfirmed') => void, options: { unconfirmed?: boolean } = {}): void {
    let renewing = false;
    let confirmedAt = Date.now();
    const lose = (timer: NodeJS.Timeout, session: string, why: 'expired' | 'unconfirmed') => {
      // Released (or re-made) meanwhile: the answer is about a session this lock no longer holds.
      if (this.timer !== timer || this.session !== session || this.lost) return;
      this.lost = true;
      onLost(why);
    };
    const timer = setInterval(async () => {
      const session = this.session;
      if (!session || this.lost) return;
      if (options.unconfirmed && Date.now() - confirmedAt > LEADER_TTL_SECONDS * 1000) return lose(timer, session, 'unconfirmed');
      // One renewal at a time: against a Consul that does not answer, each one retries for seconds.
      if (renewing) return;
      renewing = true;
      const ok = await this.target.renewSession(session).then(
        (renewed) => {
          if (renewed) confirmedAt = Date.now();
          return renewed;
        },
        () => true,
      );
      renewing = false;
      if (!ok) lose(timer, session, 'expired');
    }, (LEADER_TTL_SECONDS * 1000) / 3);
    this.timer = timer;
    this.timer.unref();
  }

  /** Releases the lock and destroys the session (clean shutdown). */
  async release(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    const session = this.session;
    this.session = undefined;
    if (!session) return;
    // Behavior delete: destroying the session removes the leader key, which frees the lock at once.
    await this.target.destroySession(session).catch(() => undefined);
  }
}
