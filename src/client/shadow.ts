import type { Owner } from './phase.js';

/** What a shadow read found, from the owner's point of view. */
export type ShadowVerdict = 'match' | 'missing-in-etcd' | 'missing-in-consul' | 'value-differs';

/** Compares the owner's value with the other store's (pure; values are never kept or shown). */
export function compareShadow(owner: Owner, ownerValue: Buffer | undefined, otherValue: Buffer | undefined): ShadowVerdict {
  if (ownerValue === undefined && otherValue === undefined) return 'match';
  const etcd = owner === 'etcd' ? ownerValue : otherValue;
  const consul = owner === 'etcd' ? otherValue : ownerValue;
  if (etcd === undefined) return 'missing-in-etcd';
  if (consul === undefined) return 'missing-in-consul';
  return etcd.equals(consul) ? 'match' : 'value-differs';
}

/**
 * When this client last wrote each key, so a shadow difference on a key it
 * just wrote (the other store has not caught up yet) is not counted.
 * Memory is bounded by the keys written within the window.
 */
export class RecentWrites {
  // Map order is insertion order; a key written again is moved to the end, so the oldest entries come first.
  private readonly writes = new Map<string, number>();

  constructor(private readonly windowMs: number, private readonly now: () => number = Date.now) {}

  note(key: Buffer): void {
    const id = key.toString('latin1');
    const at = this.now();
    this.writes.delete(id);
    this.writes.set(id, at);
    this.prune(at);
  }

  /** Whether the key was written within the window before now. */
  recent(key: Buffer): boolean {
    const at = this.writes.get(key.toString('latin1'));
    return at !== undefined && this.now() - at <= this.windowMs;
  }

  get size(): number {
    return this.writes.size;
  }

  private prune(now: number): void {
    for (const [id, at] of this.writes) {
      if (now - at <= this.windowMs) break;
      this.writes.delete(id);
    }
  }
}

/** Why a shadow read was not compared to the end. */
export type ShadowSkip = 'recent-write' | 'switched' | 'not-in-consul' | 'closed';

/** Shadow-read counters (`stats().shadow`). */
export interface ShadowStats {
  enabled: boolean;
  /** Reads whose other store was read and compared. */
  compared: number;
  /** Equal at the first comparison. */
  matched: number;
  /** Different at first, equal on the re-read: a write in flight. */
  settled: number;
  /** Still different after the re-read, not written by this client within the window, no switch in between. */
  mismatches: number;
  skipped: Record<ShadowSkip, number>;
  /** The other store could not be read. */
  errors: number;
  /** Comparisons still running. */
  pending: number;
  /** The most recent mismatched keys (as text, `\xNN` for other bytes), newest last; never values. */
  mismatchedKeys: string[];
}

export function emptyShadowStats(enabled: boolean): ShadowStats {
  return { enabled, compared: 0, matched: 0, settled: 0, mismatches: 0, skipped: { 'recent-write': 0, switched: 0, 'not-in-consul': 0, closed: 0 }, errors: 0, pending: 0, mismatchedKeys: [] };
}

/** Decides whether one read is shadowed, for a sampling rate in [0, 1] (pure given `random`). */
export function sampled(rate: number, random: () => number): boolean {
  return rate >= 1 || (rate > 0 && random() < rate);
}

