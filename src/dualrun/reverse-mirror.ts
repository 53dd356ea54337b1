import { isMigrateError } from '../errors.js';
import type { CompiledRule, Mapping } from '../mapping/mapping.js';
import { findRule, routeKey, routeTargetKey } from '../mapping/route.js';
import { formatKey } from '../report/keys.js';
import type { BlockingReader } from '../stores/consul-blocking.js';
import { sleep, TxnFailedError } from '../stores/consul-http.js';
import { prefixEnd } from '../stores/key-range.js';
import type { SourceWriteOp, SourceWriter } from '../stores/etcd-writer.js';
import type { SourceEntry, SourceReader, TargetEntry, TargetStore } from '../stores/types.js';
import type { OwnersDoc } from '../cutover/phase.js';
import type { DualRunLog } from './dualrun.js';
import type { OwnWrites } from './own-writes.js';

/**
 * The `owners` fence document as the dual-run last read it. Its Consul index
 * goes into every apply txn (`check-index`), so a txn planned under an older
 * ownership fails and is re-planned from the checkpoint.
 */
export class Ownership {
  doc: OwnersDoc | undefined;
  index = 0;

  set(doc: OwnersDoc | undefined, index: number): boolean {
    const changed = index !== this.index;
    this.doc = doc;
    this.index = index;
    return changed;
  }

  /** Rules whose current phase is `cutover`: the ones with a running reverse mirror. */
  mirrored(): string[] {
    return Object.entries(this.doc?.rules ?? {}).filter(([, r]) => r.phase === 'cutover').map(([name]) => name);
  }
}

/** `ops` in txns of at most {@link REVERSE_TXN_OPS} ops and {@link REVERSE_TXN_BYTES} bytes (a larger op alone), in order. */
export function reverseBatches(ops: readonly SourceWriteOp[]): SourceWriteOp[][] {
  const batches: SourceWriteOp[][] = [];
  let batch: SourceWriteOp[] = [];
  let bytes = 0;
  for (const op of ops) {
    const size = opBytes(op);
    if (batch.length > 0 && (batch.length >= REVERSE_TXN_OPS || bytes + size > REVERSE_TXN_BYTES)) {
      batches.push(batch);
      batch = [];
      bytes = 0;
    }
    batch.push(op);
    bytes += size;
  }
  if (batch.length > 0) batches.push(batch);
  return batches;
}

/** What an op adds to a txn request: its key and value, and a little framing. */
function opBytes(op: SourceWriteOp): number {
  return op.key.length + (op.verb === 'put' ? op.value.length : 0) + 16;
}

/** Deletes that a mirror derives itself never remove more than this share of a rule's keys (and more than 10) without a flag. */
export function reverseDeleteGuardTrips(deletes: number, keys: number): boolean {
  return deletes > 10 && deletes > keys * 0.1;
}

export interface ReverseMirrorDeps {
  rule: CompiledRule;
  mapping: Mapping;
  source: SourceReader;
  writer: Pick<SourceWriter, 'applyTxn'>;
  blocking: BlockingReader;
  own: OwnWrites;
  /** Releases Consul keys from the sessions that mirror etcd leases (see `release`); asks whether such a session still exists. */
  target: Pick<TargetStore, 'applyTxn' | 'readSession'>;
  /** The sessions this migration made for etcd leases. */
  leaseSessions: ReadonlySet<string>;
  /** Keys the dual-run wrote back after their lease's session was lost (etcd's value, the new session): not an application's writes. */
  restored: Map<string, { session: string; value: Buffer }>;
  log: DualRunLog;
  /** The etcd revision up to which the forward watch has seen every event (the checkpoint). */
  checkpoint: () => number;
  /**
   * An etcd key that a first pass found unlike Consul's and that changed after
   * the checkpoint the pass started from: a late write when Consul owned the
   * rule at its revision (the callback judges), which the forward watch may
   * never see (etcd compacted that history while no dual-run ran).
   */
  onChangedSince: (entry: SourceEntry) => Promise<void>;
  onApplied: (ops: number) => void;
  /** A pass that failed (retried after a backoff), or a value etcd refuses to take: counted by the error's `kind`. */
  onError: (kind: string) => void;
  /** After each pass that completed (Consul's answer mirrored): a failure before it is over. */
  onPass: () => void;
  onGuardTrip: (detail: string) => void;
  /** A session of an etcd lease found gone (Consul took its keys): the lease pass checks that lease next, and writes them back while it lives. */
  onLeaseSessionGone: (session: string) => void;
  /** `dualrun --allow-mass-delete`: deletes past the guard are mirrored too. */
  allowMassDelete: boolean;
}

/** etcd ops per reverse txn (etcd's default limit is 128). */
const REVERSE_TXN_OPS = 100;
/**
 * Bytes of keys and values per reverse txn. etcd refuses a request over its
 * `--max-request-bytes` (1.5 MiB by default) as "request is too large": a few
 * large values in one txn passed that, and the mirror retried the same txn
 * forever while no other change of the rule reached etcd. A single op larger
 * than this goes alone.
 */
export const REVERSE_TXN_BYTES = 1024 * 1024;

/**
 * Consul → etcd for one rule after its cutover: blocking queries on the
 * rule's Consul prefix, each answer diffed against the last one seen (by
 * ModifyIndex), the changes applied to etcd in txns with the keys mapped back
 * through the inverse route. The first pass diffs Consul against etcd itself.
 * Keys are written without a lease. Derived deletes sit behind the delete
 * guard; a Consul key no etcd key maps to is skipped and logged.
 *
 * A key an application writes in Consul while a lease's session still holds it
 * is released from that session, as etcd detaches a key from its lease on a put
 * without one: otherwise the end of the old etcd lease would destroy the
 * session, and Consul (then etcd, through this mirror) would delete the
 * application's new value.
 */
export class ReverseMirror {
  private readonly controller = new AbortController();
  private done: Promise<void> | undefined;
  private readonly foreignLogged = new Set<string>();
  /** Keys of the last answer held by a session of an etcd lease (key → session). */
  private leaseHeld = new Map<string, string>();
  /**
   * Keys an application wrote in Consul while a lease session held them, whose value this mirror wrote
   * to etcd but could not release from the session (key → that value): the session went first.
   */
  private readonly unreleased = new Map<string, Buffer>();

  constructor(private readonly deps: ReverseMirrorDeps) {}

  start(parent: AbortSignal): void {
    const stop = () => this.controller.abort();
    parent.addEventListener('abort', stop, { once: true });
    this.done = this.run().finally(() => parent.removeEventListener('abort', stop));
  }

  async stop(): Promise<void> {
    this.controller.abort();
    await this.done?.catch(() => undefined);
  }

  private async run(): Promise<void> {
    const { rule, log } = this.deps;
    const signal = this.controller.signal;
    let lastSeen: Map<string, number> | undefined;
    let index = 0;
    let backoff = 250;
    let since = this.deps.checkpoint();
    log('info', `reverse mirror of rule ${rule.name} started: Consul ${rule.to} → etcd ${formatKey(rule.fromBytes)}`);
    while (!signal.aborted) {
      try {
        const answer = await this.deps.blocking.readPrefix(rule.to, index, signal);
        if (signal.aborted) break;
        if (index > 0 && answer.index === index && lastSeen) continue;
        const entries = answer.entries.filter((e) => e.key.startsWith(rule.to));
        lastSeen = lastSeen ? await this.applyChanges(entries, lastSeen) : await this.applyFirst(entries, since);
        index = answer.index;
        backoff = 250;
        this.deps.onPass();
      } catch (err) {
        if (signal.aborted) break;
        this.deps.onError(isMigrateError(err) ? err.code : 'internal');
        log('warn', `reverse mirror of rule ${rule.name}: ${(err as Error).message}; retrying in ${backoff} ms`);
        await sleep(backoff, signal);
        backoff = Math.min(10_000, backoff * 2);
        // Re-diff against etcd after a failure: a txn may or may not have landed.
        lastSeen = undefined;
        index = 0;
        since = this.deps.checkpoint();
      }
    }
    log('info', `reverse mirror of rule ${rule.name} stopped`);
  }

  /** Maps a Consul key back to its etcd key, or undefined (logged once) when no etcd key of this rule maps there. */
  private sourceOf(key: string): Buffer | undefined {
    const route = routeTargetKey(this.deps.mapping, key);
    if (route.kind === 'owned' && route.rule.name === this.deps.rule.name) return route.source;
    if (!this.foreignLogged.has(key)) {
      this.foreignLogged.add(key);
      this.deps.log('warn', `reverse mirror of rule ${this.deps.rule.name}: Consul key ${formatKey(key)} maps back to no etcd key of this rule (${route.kind === 'foreign' ? route.detail : route.kind}); not mirrored`);
    }
    return undefined;
  }

  /**
   * First pass: Consul against etcd, so nothing missed while no mirror ran is
   * lost. etcd keys changed after `since` are offered as late writes before
   * Consul's values go over them.
   */
  private async applyFirst(entries: TargetEntry[], since: number): Promise<Map<string, number>> {
    const { rule, mapping, source } = this.deps;
    const wanted = new Map<string, { key: Buffer; value: Buffer; entry: TargetEntry }>();
    for (const e of entries) {
      const key = this.sourceOf(e.key);
      if (key) wanted.set(key.toString('hex'), { key, value: e.value, entry: e });
    }
    const held: TargetEntry[] = [];
    const ops: SourceWriteOp[] = [];
    const deletes: SourceWriteOp[] = [];
    let etcdKeys = 0;
    for await (const page of source.readPages({ start: rule.fromBytes, end: prefixEnd(rule.fromBytes) })) {
      for (const entry of page.entries) {
        // Nested rules (a longer `from`, a keep rule) are not this rule's keys.
        if (findRule(mapping, entry.key)?.name !== rule.name) continue;
        etcdKeys++;
        const hex = entry.key.toString('hex');
        const want = wanted.get(hex);
        if (!want) {
          // Only keys the forward route puts in Consul: unmappable (a value too large too) and `leases: skip` keys never
          // had a Consul twin, and Consul's lack of one is no delete.
          const forward = routeKey(mapping, entry.key, { valueBytes: entry.value.length, maxValueBytes: mapping.maxValueBytes });
          if (forward.kind === 'mapped' && !(entry.lease !== '0' && rule.leases === 'skip')) {
            if (entry.modRevision > since) await this.deps.onChangedSince(entry);
            deletes.push({ verb: 'delete', key: entry.key });
          }
          continue;
        }
        wanted.delete(hex);
        if (want.value.equals(entry.value)) continue;
        if (entry.modRevision > since) await this.deps.onChangedSince(entry);
        ops.push({ verb: 'put', key: want.key, value: want.value });
        // Rewritten in Consul while no mirror ran (a restart): released as `applyChanges` does.
        if (want.entry.session && this.deps.leaseSessions.has(want.entry.session)) held.push(want.entry);
      }
    }
    let leaseEnded = 0;
    for (const want of wanted.values()) {
      // Held by the session of an etcd lease, and gone from etcd: the lease ended while no mirror ran, and etcd dropped
      // its keys; the lease pass destroys the session, which takes the Consul key too. Written back, it would stay in
      // etcd for good, without a lease: a dead service instance that never expires.
      if (want.entry.session && this.deps.leaseSessions.has(want.entry.session)) {
        leaseEnded++;
        continue;
      }
      ops.push({ verb: 'put', key: want.key, value: want.value });
    }
    if (leaseEnded > 0) this.deps.log('info', `reverse mirror of rule ${rule.name}: first pass left ${leaseEnded} Consul key(s) out of etcd: held by sessions of etcd leases, and etcd no longer has them (their lease ended); the lease pass removes them from Consul`);
    this.leaseHeld = this.heldByLeases(entries);
    if (deletes.length > 0 && reverseDeleteGuardTrips(deletes.length, etcdKeys) && !this.deps.allowMassDelete) {
      this.deps.onGuardTrip(`the first pass would delete ${deletes.length} of ${etcdKeys} etcd key(s) that Consul no longer holds; deletes skipped (if Consul's deletes are intended, start the dual-run with --allow-mass-delete)`);
    } else ops.push(...deletes);
    await this.apply(ops);
    await this.release(held);
    if (ops.length > 0) this.deps.log('info', `reverse mirror of rule ${rule.name}: first pass wrote ${ops.length} change(s) from Consul to etcd`);
    return new Map(entries.map((e) => [e.key, e.modifyIndex]));
  }

  private async applyChanges(entries: TargetEntry[], lastSeen: Map<string, number>): Promise<Map<string, number>> {
    const ops: SourceWriteOp[] = [];
    const seen = new Map<string, number>();
    const held: TargetEntry[] = [];
    for (const e of entries) {
      seen.set(e.key, e.modifyIndex);
      this.unreleased.delete(e.key);
      if (lastSeen.get(e.key) === e.modifyIndex) continue;
      const back = this.deps.restored.get(e.key);
      if (back) {
        this.deps.restored.delete(e.key);
        // etcd's own value, held by its lease's new session: nothing to mirror, nothing to release.
        if (e.session === back.session && e.value.equals(back.value)) continue;
      }
      const key = this.sourceOf(e.key);
      if (!key) continue;
      ops.push({ verb: 'put', key, value: e.value });
      if (e.session && this.deps.leaseSessions.has(e.session)) held.push(e);
    }
    let deletes: SourceWriteOp[] = [];
    const sessionGone = new Map<string, boolean>();
    const dropped: string[] = [];
    for (const key of lastSeen.keys()) {
      if (seen.has(key)) continue;
      const source = this.sourceOf(key);
      if (!source) continue;
      // Gone with the session of an etcd lease: the lease ended (etcd dropped the key itself), or Consul reaped the
      // session while no dual-run renewed it, and the lease pass writes the key again while the lease lives. Not an
      // application's delete: mirrored, it deleted a live lease's key from etcd too.
      const holder = this.leaseHeld.get(key);
      if (holder) {
        if (!sessionGone.has(holder)) {
          const gone = (await this.deps.target.readSession(holder)) === undefined;
          sessionGone.set(holder, gone);
          if (gone) this.deps.onLeaseSessionGone(holder);
        }
        if (sessionGone.get(holder)) {
          dropped.push(key);
          continue;
        }
      }
      deletes.push({ verb: 'delete', key: source });
    }
    this.leaseHeld = this.heldByLeases(entries);
    await this.restoreDropped(dropped);
    // Keys etcd no longer has need no delete, and are not a mass delete: etcd dropped them itself (a lease
    // ended, and the dual-run destroyed its session, which took the Consul keys with it).
    if (deletes.length > 0 && reverseDeleteGuardTrips(deletes.length, lastSeen.size)) deletes = await this.stillInEtcd(deletes);
    if (deletes.length > 0 && reverseDeleteGuardTrips(deletes.length, lastSeen.size) && !this.deps.allowMassDelete) {
      // One trip for the drop: the dropped keys are not seen any more, so the next answer does not count
      // them again (kept as seen, every later answer tripped anew: thousands of trips for one event). They
      // stay in etcd until a dual-run started with --allow-mass-delete mirrors them in its first pass.
      this.deps.onGuardTrip(`Consul dropped ${deletes.length} of ${lastSeen.size} key(s) at once; the deletes were not mirrored to etcd (if they are intended, restart the dual-run with --allow-mass-delete: its first pass mirrors them)`);
    } else ops.push(...deletes);
    await this.apply(ops);
    await this.release(held);
    return seen;
  }

  /**
   * Keys Consul dropped with a lost lease session that this mirror could not release: an application
   * wrote the key in Consul, this mirror wrote its value to etcd (without a lease, so no lease pass
   * brings it back), and the session went before the release. Written back to Consul, unless the key
   * exists there again.
   */
  private async restoreDropped(dropped: readonly string[]): Promise<void> {
    for (const key of dropped) {
      const value = this.unreleased.get(key);
      if (!value) continue;
      this.unreleased.delete(key);
      try {
        await this.deps.target.applyTxn([{ verb: 'cas', key, value, index: 0 }]);
        this.deps.log('info', `reverse mirror of rule ${this.deps.rule.name}: ${formatKey(key)} went with a lost lease session after an application wrote it; written back to Consul from etcd`);
      } catch (err) {
        // Written again meanwhile: the next answer has it.
        if (!(err instanceof TxnFailedError)) throw err;
      }
    }
  }

  private heldByLeases(entries: readonly TargetEntry[]): Map<string, string> {
    return new Map(entries.flatMap((e) => (e.session && this.deps.leaseSessions.has(e.session) ? [[e.key, e.session] as const] : [])));
  }

  /** The deletes whose etcd key still exists (read keys-only over the rule's prefix). */
  private async stillInEtcd(deletes: SourceWriteOp[]): Promise<SourceWriteOp[]> {
    const { rule, source } = this.deps;
    const present = new Set<string>();
    for await (const page of source.readPages({ start: rule.fromBytes, end: prefixEnd(rule.fromBytes) }, { keysOnly: true })) {
      for (const entry of page.entries) present.add(entry.key.toString('hex'));
    }
    return deletes.filter((op) => present.has(op.key.toString('hex')));
  }

  /**
   * Releases keys an application rewrote in Consul from the lease sessions that
   * still hold them, each checked on the index just read: a key written again
   * meanwhile is left for the next answer, which sees it changed.
   */
  private async release(entries: TargetEntry[]): Promise<void> {
    for (const e of entries) {
      try {
        await this.deps.target.applyTxn([
          { verb: 'check-index', key: e.key, index: e.modifyIndex },
          { verb: 'unlock', key: e.key, value: e.value, session: e.session!, flags: e.flags },
        ]);
        this.deps.log('info', `reverse mirror of rule ${this.deps.rule.name}: ${formatKey(e.key)} was written in Consul while session ${e.session} of an etcd lease held it; released it, so the lease's end does not delete it`);
      } catch (err) {
        if (!(err instanceof TxnFailedError)) throw err;
        // Written again (the next answer has it), or the session went first and took the key (`restoreDropped`).
        this.unreleased.set(e.key, e.value);
      }
    }
  }

  private async apply(ops: SourceWriteOp[]): Promise<void> {
    for (const part of reverseBatches(ops)) await this.applyPart(part);
  }

  /**
   * One txn. One that etcd finds too large all the same (its limit set below
   * 1.5 MiB) is split in two; a lone put it refuses is a value etcd cannot
   * take: said, counted, and left out, so the rule's other changes go on
   * reaching etcd. etcd keeps its old value; a rollback's parity check refuses
   * until the two agree.
   */
  private async applyPart(part: SourceWriteOp[]): Promise<void> {
    try {
      await this.deps.own.track(this.deps.rule.name, part, () => this.deps.writer.applyTxn(part));
    } catch (err) {
      if (!/request is too large/i.test((err as Error).message)) throw err;
      if (part.length > 1) {
        const half = part.length >> 1;
        await this.applyPart(part.slice(0, half));
        await this.applyPart(part.slice(half));
        return;
      }
      const op = part[0]!;
      const bytes = opBytes(op);
      this.deps.onError('etcd_request_too_large');
      this.deps.log('error', `reverse mirror of rule ${this.deps.rule.name}: etcd refuses the write of ${formatKey(op.key)} (${bytes} bytes) as a request too large; etcd keeps its old value there, and a rollback of the rule is refused until the two agree. Raise etcd's --max-request-bytes above ${bytes + 4096}, then restart the dual-run: its first pass writes the value.`, { rule: this.deps.rule.name });
      return;
    }
    this.deps.onApplied(part.length);
  }
}
