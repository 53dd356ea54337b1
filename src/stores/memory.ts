import { randomUUID } from 'node:crypto';
import { TxnFailedError } from './consul-http.js';
import { SourceCompactedError } from './etcd.js';
import { ValueTooLargeError } from './consul.js';
import { compareKeys } from './consul-reads.js';
import { META_MIGRATION, META_RULE, type ServiceOwner } from '../services/registration.js';
import { DEFAULT_MAX_VALUE_BYTES, DEFAULT_TXN_MAX_BYTES, type TargetLimits } from './txn-batcher.js';
import type {
  PutOptions,
  KeyRange,
  LeaseInfo,
  ReadPagesOptions,
  ServiceDefinition,
  ServiceInstance,
  SessionInfo,
  SessionSpec,
  SourceEntry,
  SourceEvent,
  SourcePage,
  SourceReader,
  SourceStatus,
  SourceWatch,
  TargetEntry,
  TargetInfo,
  TargetStore,
  TxnOp,
  WatchMessage,
} from './types.js';

/**
 * In-memory stores for unit tests of the pure core. They follow the semantics
 * the real adapters expose (pinned revisions, one revision per write group,
 * all-or-nothing txns with checks), not the servers' full behaviour.
 */
function inRange(key: Buffer, range: KeyRange): boolean {
  return Buffer.compare(key, range.start) >= 0 && (range.end.length === 0 || Buffer.compare(key, range.end) < 0);
}

export class MemorySource implements SourceReader {
  private history: { revision: number; events: SourceEvent[] }[] = [];
  private revision = 1;
  /** Revisions below this have been compacted away (reads pinned there fail as on etcd). */
  private compacted = 0;
  private leases = new Map<string, { ttl: number; granted: number }>();
  private nextLease = 1000;
  readonly clusterId: string;

  constructor(clusterId = '14841639068965178418') {
    this.clusterId = clusterId;
  }

  /** Applies a group of writes at one new revision (an etcd txn). */
  write(ops: { key: string | Buffer; value?: string | Buffer; lease?: string; delete?: boolean }[]): number {
    const revision = ++this.revision;
    const events: SourceEvent[] = [];
    for (const op of ops) {
      const key = Buffer.isBuffer(op.key) ? op.key : Buffer.from(op.key);
      const previous = this.current(key, revision - 1);
      if (op.delete) {
        if (!previous) continue;
        events.push({ type: 'delete', entry: { ...previous, value: Buffer.alloc(0), modRevision: revision, version: 0, lease: '0' }, previous });
      } else {
        const value = op.value === undefined ? Buffer.alloc(0) : Buffer.isBuffer(op.value) ? op.value : Buffer.from(op.value);
        events.push({
          type: 'put',
          entry: { key, value, createRevision: previous?.createRevision ?? revision, modRevision: revision, version: (previous?.version ?? 0) + 1, lease: op.lease ?? '0' },
          ...(previous ? { previous } : {}),
        });
      }
    }
    this.history.push({ revision, events });
    return revision;
  }

  put(key: string | Buffer, value: string | Buffer, lease?: string): number {
    return this.write([{ key, value, lease }]);
  }

  delete(key: string | Buffer): number {
    return this.write([{ key, delete: true }]);
  }

  /** Compacts history below `revision`, as `etcdctl compact` does (the snapshot reads keep working from it on). */
  compact(revision = this.revision): void {
    this.compacted = revision;
  }

  private compactor: { afterPage: number; times: number; change: () => void; seen: { compactions: number } } | undefined;

  /**
   * A busy cluster's auto-compaction: after the `afterPage`-th page of each
   * pinned read, `change` runs (the application writes) and the source compacts,
   * `times` times in all. The count of compactions so far is in the result.
   */
  compactDuringReads(afterPage: number, times: number, change: () => void = () => {}): { compactions: number } {
    this.compactor = { afterPage, times, change, seen: { compactions: 0 } };
    return this.compactor.seen;
  }

  private checkCompacted(revision: number): void {
    if (revision < this.compacted) throw new SourceCompactedError(0, revision);
  }

  grantLease(ttl: number): string {
    const id = String(this.nextLease++);
    this.leases.set(id, { ttl, granted: ttl });
    return id;
  }

  /** Expires a lease: its keys go in one revision, as etcd does. */
  revokeLease(id: string): number {
    this.leases.delete(id);
    const keys = this.snapshot(this.revision).filter((e) => e.lease === id).map((e) => ({ key: e.key, delete: true }));
    return this.write(keys);
  }

  private current(key: Buffer, atRevision: number): SourceEntry | undefined {
    let found: SourceEntry | undefined;
    for (const { revision, events } of this.history) {
      if (revision > atRevision) break;
      for (const event of events) if (event.entry.key.equals(key)) found = event.type === 'put' ? event.entry : undefined;
    }
    return found;
  }

  private snapshot(atRevision: number): SourceEntry[] {
    const map = new Map<string, SourceEntry>();
    for (const { revision, events } of this.history) {
      if (revision > atRevision) break;
      for (const event of events) {
        const id = event.entry.key.toString('hex');
        if (event.type === 'put') map.set(id, event.entry);
        else map.delete(id);
      }
    }
    return [...map.values()].sort((a, b) => Buffer.compare(a.key, b.key));
  }

  async status(): Promise<SourceStatus> {
    return { version: '3.4.23', clusterId: this.clusterId, memberId: '1', leader: '1', revision: this.revision, dbSizeBytes: 0, endpoint: 'memory' };
  }

  async *readPages(range: KeyRange, options: ReadPagesOptions = {}): AsyncIterable<SourcePage> {
    const revision = options.revision ?? this.revision;
    this.checkCompacted(revision);
    const pageKeys = options.pageKeys ?? 1000;
    const entries = this.snapshot(revision).filter((e) => inRange(e.key, range));
    for (let i = 0; i < entries.length; i += pageKeys) {
      // As the etcd adapter: an abort ends the pages (the reader checks the signal to tell that from the end).
      if (options.signal?.aborted) return;
      // Each page is its own range request at `revision`, which etcd may compact in between.
      if (i > 0) this.checkCompacted(revision);
      const page = entries.slice(i, i + pageKeys);
      yield { revision, entries: options.keysOnly ? page.map((e) => ({ ...e, value: Buffer.alloc(0) })) : page };
      const c = this.compactor;
      if (c && options.revision !== undefined && i / pageKeys + 1 === c.afterPage && c.seen.compactions < c.times) {
        c.seen.compactions++;
        c.change();
        this.compact();
      }
    }
  }

  async count(range: KeyRange, revision?: number): Promise<number> {
    this.checkCompacted(revision ?? this.revision);
    return this.snapshot(revision ?? this.revision).filter((e) => inRange(e.key, range)).length;
  }

  async modifiedSince(range: KeyRange, revision: number, since: number): Promise<boolean> {
    this.checkCompacted(revision);
    return this.snapshot(revision).some((e) => inRange(e.key, range) && e.modRevision >= since);
  }

  async readLease(id: string, options: { keys?: boolean } = {}): Promise<LeaseInfo> {
    const lease = this.leases.get(id);
    if (!lease) return { id, ttl: -1, grantedTtl: 0, ...(options.keys ? { keys: [] } : {}) };
    return { id, ttl: lease.ttl, grantedTtl: lease.granted, ...(options.keys ? { keys: this.snapshot(this.revision).filter((e) => e.lease === id).map((e) => e.key) } : {}) };
  }

  async listLeases(): Promise<string[]> {
    return [...this.leases.keys()];
  }

  async watch(range: KeyRange, fromRevision: number): Promise<SourceWatch> {
    if (fromRevision < this.compacted) throw new SourceCompactedError(this.compacted, fromRevision);
    const messages: WatchMessage[] = [];
    for (const { revision, events } of this.history) {
      if (revision < fromRevision) continue;
      const matching = events.filter((e) => inRange(e.entry.key, range));
      if (matching.length > 0) messages.push({ kind: 'revision', revision, events: matching });
    }
    messages.push({ kind: 'progress', revision: this.revision });
    return {
      buffered: () => messages.filter((m) => m.kind === 'revision').length,
      requestProgress() {},
      latestRevision: () => this.revision,
      async close() {},
      async *[Symbol.asyncIterator]() {
        yield* messages;
      },
    };
  }

  close(): void {}
}

export class MemoryTarget implements TargetStore {
  readonly entries = new Map<string, TargetEntry>();
  readonly sessions = new Map<string, SessionInfo>();
  /** Service instances on the (one) agent, with their TTL check's status. */
  readonly services = new Map<string, ServiceDefinition & { checkStatus?: string }>();
  /** Every write request, for tests that prove nothing was written. */
  writes = 0;
  private index = 1;

  constructor(
    private readonly targetInfo: Partial<TargetInfo> = {},
    private readonly overrides: Partial<TargetLimits> = {},
  ) {}

  async info(): Promise<TargetInfo> {
    return { version: '1.22.2', datacenter: 'dc1', nodeName: 'memory', txnMaxOps: 128, leader: 'memory', address: 'memory', ...this.targetInfo };
  }

  async limits(): Promise<TargetLimits> {
    return {
      txnMaxOps: this.overrides.txnMaxOps ?? (await this.info()).txnMaxOps,
      txnMaxBytes: this.overrides.txnMaxBytes ?? DEFAULT_TXN_MAX_BYTES,
      maxValueBytes: this.overrides.maxValueBytes ?? DEFAULT_MAX_VALUE_BYTES,
    };
  }

  async listFolders(prefix: string): Promise<{ folders: string[]; filtered: boolean }> {
    const folders = new Set<string>();
    for (const key of this.entries.keys()) {
      const slash = key.startsWith(prefix) ? key.indexOf('/', prefix.length) : -1;
      if (slash >= 0) folders.add(key.slice(0, slash + 1));
    }
    return { folders: [...folders].sort(compareKeys), filtered: false };
  }

  async listKeys(prefix: string): Promise<string[]> {
    return [...this.entries.keys()].filter((k) => k.startsWith(prefix)).sort(compareKeys);
  }

  async readEntries(keys: readonly string[]): Promise<TargetEntry[]> {
    return keys.map((k) => this.entries.get(k)).filter((e): e is TargetEntry => e !== undefined);
  }

  async readKey(key: string): Promise<TargetEntry | undefined> {
    return this.entries.get(key);
  }

  async applyTxn(ops: readonly TxnOp[]): Promise<number | undefined> {
    const { maxValueBytes, txnMaxOps } = await this.limits();
    if (ops.length > txnMaxOps) throw new RangeError(`a txn of ${ops.length} ops exceeds the target's limit of ${txnMaxOps}`);
    for (const op of ops) if ('value' in op && op.value.length > maxValueBytes) throw new ValueTooLargeError(op.key, op.value.length, maxValueBytes);
    this.writes++;
    const next = new Map(this.entries);
    const errors: { opIndex: number; what: string }[] = [];
    const index = ++this.index;
    ops.forEach((op, opIndex) => {
      const existing = next.get(op.key);
      const set = (value: Buffer, flags: number | undefined, session: string | undefined) =>
        next.set(op.key, { key: op.key, value, flags: flags ?? 0, modifyIndex: index, ...(session ? { session } : {}) });
      switch (op.verb) {
        case 'set':
          set(op.value, op.flags, existing?.session);
          break;
        case 'cas':
          if ((op.index === 0 && existing) || (op.index !== 0 && existing?.modifyIndex !== op.index)) errors.push({ opIndex, what: `failed to set key "${op.key}", index is stale` });
          else set(op.value, op.flags, existing?.session);
          break;
        case 'lock':
          if (!this.sessions.has(op.session)) errors.push({ opIndex, what: `invalid session "${op.session}"` });
          else if (existing?.session && existing.session !== op.session) errors.push({ opIndex, what: `failed to lock key "${op.key}", lock is already held` });
          else set(op.value, op.flags, op.session);
          break;
        case 'unlock':
          if (existing?.session !== op.session) errors.push({ opIndex, what: `failed to unlock key "${op.key}", lock isn't held, or is held by another session` });
          else set(op.value, op.flags, undefined);
          break;
        case 'delete':
          next.delete(op.key);
          break;
        case 'delete-tree':
          for (const key of [...next.keys()]) if (key.startsWith(op.key)) next.delete(key);
          break;
        case 'delete-cas':
          if (existing && existing.modifyIndex !== op.index) errors.push({ opIndex, what: `failed to delete key "${op.key}", index is stale` });
          else next.delete(op.key);
          break;
        case 'check-index':
          if (!existing) errors.push({ opIndex, what: `failed to check index, key "${op.key}" doesn't exist` });
          else if (existing.modifyIndex !== op.index) errors.push({ opIndex, what: `failed index check for key "${op.key}", current modify index ${existing.modifyIndex} != ${op.index}` });
          break;
        case 'check-session':
          if (!existing) errors.push({ opIndex, what: `failed to check session, key "${op.key}" doesn't exist` });
          else if (existing.session !== op.session) errors.push({ opIndex, what: `failed session check for key "${op.key}", current session "${existing.session ?? ''}" != "${op.session}"` });
          break;
        case 'check-not-exists':
          if (existing) errors.push({ opIndex, what: `key "${op.key}" exists` });
          break;
        case 'get':
          if (!existing) errors.push({ opIndex, what: `key "${op.key}" doesn't exist` });
          break;
        case 'get-tree':
          break;
      }
    });
    if (errors.length > 0) throw new TxnFailedError(errors);
    this.entries.clear();
    for (const [key, entry] of next) this.entries.set(key, entry);
    return index;
  }

  async putKey(key: string, value: Buffer, options: PutOptions = {}): Promise<boolean> {
    try {
      if (options.acquire) await this.applyTxn([{ verb: 'lock', key, value, session: options.acquire }]);
      else if (options.release) await this.applyTxn([{ verb: 'unlock', key, value, session: options.release }]);
      else if (options.cas !== undefined) await this.applyTxn([{ verb: 'cas', key, value, index: options.cas }]);
      else await this.applyTxn([{ verb: 'set', key, value }]);
      return true;
    } catch (err) {
      if (err instanceof TxnFailedError) return false;
      throw err;
    }
  }

  async deleteKey(key: string): Promise<void> {
    this.writes++;
    this.entries.delete(key);
  }

  async createSession(spec: SessionSpec): Promise<string> {
    this.writes++;
    const id = randomUUID();
    this.sessions.set(id, { id, name: spec.name, node: spec.node ?? 'memory', ttlSeconds: spec.ttlSeconds, behavior: 'delete', lockDelayNs: 0 });
    return id;
  }

  async renewSession(id: string): Promise<boolean> {
    return this.sessions.has(id);
  }

  async destroySession(id: string): Promise<void> {
    this.writes++;
    this.sessions.delete(id);
    for (const [key, entry] of this.entries) if (entry.session === id) this.entries.delete(key);
  }

  async readSession(id: string): Promise<SessionInfo | undefined> {
    return this.sessions.get(id);
  }

  async listSessions(): Promise<{ id: string; name: string }[]> {
    return [...this.sessions.values()].map((s) => ({ id: s.id, name: s.name }));
  }

  async listServiceInstances(migrationId: string): Promise<ServiceInstance[]> {
    return [...this.services.values()]
      .filter((s) => s.meta[META_MIGRATION] === migrationId)
      .map((s) => ({ id: s.id, name: s.name, address: s.address, port: s.port, tags: [...s.tags], meta: { ...s.meta }, node: 'memory', ...(s.check ? { checkStatus: s.checkStatus ?? s.check.status } : {}) }));
  }

  async agentServiceOwners(): Promise<Map<string, ServiceOwner>> {
    return new Map([...this.services.values()].map((s) => [s.id.toLowerCase(), { id: s.id, migration: s.meta[META_MIGRATION], rule: s.meta[META_RULE] }]));
  }

  async registerService(service: ServiceDefinition): Promise<void> {
    this.writes++;
    this.services.set(service.id, { ...service, tags: [...service.tags], meta: { ...service.meta }, ...(service.check ? { checkStatus: service.check.status } : {}) });
  }

  async deregisterService(id: string): Promise<boolean> {
    this.writes++;
    return this.services.delete(id);
  }

  async updateCheck(checkId: string, status: 'passing' | 'critical'): Promise<boolean> {
    this.writes++;
    const service = [...this.services.values()].find((s) => s.check?.id === checkId);
    if (!service) return false;
    service.checkStatus = status;
    return true;
  }
}
