import { UsageError } from '../errors.js';
import type { Mapping } from '../mapping/mapping.js';
import { findRule } from '../mapping/route.js';
import { formatKey } from '../report/keys.js';
import type { SourceWriter } from '../stores/etcd-writer.js';

/** How often the leader writes the heartbeat key (ms). */
export const LAG_HEARTBEAT_MS = 1000;

/** Heartbeats kept while the checkpoint has not reached them (the oldest always stays: it dates the lag). */
const PENDING_KEPT = 120;

/**
 * The end-to-end lag the heartbeat measured, as the dual-run publishes it.
 * `measuredSeconds`: from the last heartbeat put to the commit of the first
 * checkpoint at or past its revision. `waitingSince`: the put time (ms since
 * epoch) of the oldest heartbeat the checkpoint has not reached yet.
 */
export interface HeartbeatLag {
  measuredSeconds?: number;
  waitingSince?: number;
}

/**
 * The lag in seconds a heartbeat gives at `now`: the last measurement, or,
 * when a heartbeat has waited longer than that for the checkpoint, its age
 * (a write that old is known not to be applied yet, so the lag is at least
 * that). Undefined before the first heartbeat.
 */
export function heartbeatLagSeconds(lag: HeartbeatLag | undefined, now: number): number | undefined {
  if (!lag) return undefined;
  const waiting = lag.waitingSince === undefined ? undefined : Math.max(0, now - lag.waitingSince) / 1000;
  if (lag.measuredSeconds === undefined) return waiting;
  return waiting === undefined ? lag.measuredSeconds : Math.max(lag.measuredSeconds, waiting);
}

/**
 * Refuses a heartbeat key that a copy rule routes (exit 2): the heartbeat
 * would be replicated into Consul, and the reverse mirror or a late-write
 * check could see the dual-run's own write. Outside the rules the checkpoint
 * still passes its revision, through watch progress.
 */
export function checkHeartbeatKey(mapping: Mapping, key: string): Buffer {
  if (key === '') throw new UsageError('heartbeat_key_empty', '--heartbeat-key is empty.', { hint: 'Name one etcd key outside every copy rule, e.g. --heartbeat-key /_migrate/heartbeat.' });
  const bytes = Buffer.from(key, 'utf8');
  const rule = findRule(mapping, bytes);
  if (rule && rule.action === 'copy') {
    throw new UsageError('heartbeat_key_in_rule', `--heartbeat-key ${formatKey(bytes)} lies inside copy rule ${rule.name} (${formatKey(rule.fromBytes)}): the heartbeat would be replicated into Consul.`, {
      hint: 'Pick a key outside every copy rule, e.g. --heartbeat-key /_migrate/heartbeat; the checkpoint still passes its revision through watch progress.',
    });
  }
  return bytes;
}

/**
 * The opt-in end-to-end lag probe: the leader puts the current time into one
 * etcd key every second and remembers each put's revision; when a checkpoint
 * at or past that revision is committed to Consul, lag = commit time − put
 * time. The put time is taken before the put is sent, so the figure includes
 * etcd's own commit (it errs high, never low).
 */
export class LagHeartbeat {
  private readonly pending: { revision: number; at: number }[] = [];
  private measuredSeconds: number | undefined;

  constructor(
    readonly key: Buffer,
    private readonly writer: Pick<SourceWriter, 'applyTxn'>,
    private readonly now: () => number = Date.now,
  ) {}

  /** Writes one heartbeat; returns its revision. */
  async beat(): Promise<number> {
    const at = this.now();
    const revision = await this.writer.applyTxn([{ verb: 'put', key: this.key, value: Buffer.from(new Date(at).toISOString()) }]);
    this.pending.push({ revision, at });
    if (this.pending.length > PENDING_KEPT) this.pending.splice(1, 1);
    return revision;
  }

  /** A heartbeat waits for a checkpoint at or before `revision` (worth a checkpoint-only txn now). */
  waiting(revision: number): boolean {
    return this.pending.length > 0 && this.pending[0]!.revision <= revision;
  }

  /** A checkpoint at `revision` was committed: every heartbeat at or before it is measured. */
  committed(revision: number): void {
    let latest: { revision: number; at: number } | undefined;
    while (this.pending.length > 0 && this.pending[0]!.revision <= revision) latest = this.pending.shift();
    if (latest) this.measuredSeconds = Math.max(0, this.now() - latest.at) / 1000;
  }

  lag(): HeartbeatLag {
    return { measuredSeconds: this.measuredSeconds, waitingSince: this.pending[0]?.at };
  }
}
