import type { ServiceOwner } from '../services/registration.js';
import type { ReadHints } from './consul-reads.js';
import type { TargetLimits } from './txn-batcher.js';

/**
 * The ports between the pipeline stages and the servers (DESIGN §2). Stages
 * depend on these interfaces only; `etcd.ts` and `consul.ts` are the real
 * adapters and `memory.ts` the in-memory pair for unit tests of the pure core.
 *
 * Keys and values are bytes on the etcd side (etcd keys are arbitrary bytes)
 * and UTF-8 strings / bytes on the Consul side. Revisions are JS numbers (an
 * etcd cluster would need 2^53 writes to overflow them); lease ids are decimal
 * strings because they are random int64s.
 */

/** One key read from etcd. */
export interface SourceEntry {
  key: Buffer;
  value: Buffer;
  createRevision: number;
  modRevision: number;
  version: number;
  /** Decimal lease id, `'0'` when the key has no lease. */
  lease: string;
}

/** A page of a pinned-revision read. */
export interface SourcePage {
  /** The revision every entry of the read was taken at. */
  revision: number;
  entries: SourceEntry[];
}

/** A half-open etcd key range `[start, end)`; `end` empty means "to the end of the keyspace". */
export interface KeyRange {
  start: Buffer;
  end: Buffer;
}

/**
 * etcd keys per read page, for every command that reads a prefix. etcd 3.4
 * walks the rest of the requested range for every page it serves (the `count`
 * of a limited Range); the reader bounds each read by a prefix its keys share
 * (`PageBounds` in etcd.ts), and fewer, larger pages walk less still. At
 * 1,000,000 keys, pages of 2,000 cost etcd 42 CPU seconds, pages of 10,000 cost 10,
 * and bounded pages of 10,000 cost 6. Pages of large values are halved by the reader.
 */
export const DEFAULT_PAGE_KEYS = 10_000;

/** `--page-keys`, the same for every command that reads etcd in pages. */
export const PAGE_KEYS_HELP = 'etcd keys per read page (etcd 3.4 walks the rest of the range for every page, so larger pages read large prefixes faster)';

export interface ReadPagesOptions {
  /** Pin the read to this revision; default: the revision of the first page. */
  revision?: number;
  /** Keys per page; the reader halves it when a page of large values would not fit. */
  pageKeys?: number;
  /** Read keys and metadata only (values come back empty). */
  keysOnly?: boolean;
  /** Once aborted, the pages end early, without an error: a reader that passes it checks it after its last page. */
  signal?: AbortSignal;
}

export interface SourceStatus {
  version: string;
  clusterId: string;
  memberId: string;
  leader: string;
  revision: number;
  dbSizeBytes: number;
  endpoint: string;
}

export interface LeaseInfo {
  id: string;
  /** Remaining TTL in seconds; `-1` once the lease has expired or is unknown. */
  ttl: number;
  grantedTtl: number;
  /** The keys attached to the lease, when asked for (a lease can hold many thousands). */
  keys?: Buffer[];
}

/** One change from the etcd watch stream. */
export interface SourceEvent {
  type: 'put' | 'delete';
  entry: SourceEntry;
  /** The key as it was before this event (its value and lease), when it existed. */
  previous?: SourceEntry;
}

/**
 * What the watch stream yields: the events of one revision (never split), or
 * a progress notification saying every revision up to `revision` has been sent.
 */
export type WatchMessage =
  | { kind: 'revision'; revision: number; events: SourceEvent[] }
  /** `requested`: etcd's answer to a progress request (watch id -1), as opposed to its periodic notification for this watch. */
  | { kind: 'progress'; revision: number; requested?: boolean };

export interface SourceWatch extends AsyncIterable<WatchMessage> {
  /** Revision messages received and not yet consumed (lets the consumer batch under load only); progress notifications do not count. */
  buffered(): number;
  /** Ask the server for a progress notification (etcd ≥ 3.4). */
  requestProgress(): void;
  /** etcd's revision as of the last response received, consumed or still queued. */
  latestRevision(): number;
  close(): Promise<void>;
}

/** Reads from etcd. */
export interface SourceReader {
  status(): Promise<SourceStatus>;
  /** Pinned-revision pages over a range, in key order, memory bounded by the page. */
  readPages(range: KeyRange, options?: ReadPagesOptions): AsyncIterable<SourcePage>;
  /** How many keys `range` holds at `revision` (for progress and estimates; no values are read). */
  count(range: KeyRange, revision?: number): Promise<number>;
  /** Whether a key `range` holds at `revision` was last written at revision `since` or later (keys only, one at most). */
  modifiedSince(range: KeyRange, revision: number, since: number): Promise<boolean>;
  readLease(id: string, options?: { keys?: boolean }): Promise<LeaseInfo>;
  listLeases(): Promise<string[]>;
  /** One ordered stream of every change in `range` from `fromRevision` (inclusive). */
  watch(range: KeyRange, fromRevision: number): Promise<SourceWatch>;
  close(): void;
}

/** One key as Consul stores it. */
export interface TargetEntry {
  key: string;
  value: Buffer;
  flags: number;
  modifyIndex: number;
  /** The session holding the key, when it is locked. */
  session?: string;
}

/** A `/v1/txn` KV operation in the tool's own terms (values as bytes). */
export type TxnOp =
  | { verb: 'set'; key: string; value: Buffer; flags?: number }
  | { verb: 'cas'; key: string; value: Buffer; index: number; flags?: number }
  | { verb: 'lock' | 'unlock'; key: string; value: Buffer; session: string; flags?: number }
  | { verb: 'delete' | 'delete-tree' | 'check-not-exists' | 'get' | 'get-tree'; key: string }
  | { verb: 'delete-cas' | 'check-index'; key: string; index: number }
  | { verb: 'check-session'; key: string; session: string };

export interface TargetInfo {
  version: string;
  datacenter: string;
  nodeName: string;
  /** Operations allowed in one txn by this server version (DESIGN §3). */
  txnMaxOps: number;
  /**
   * The request and value limits the agent enforces (`txn_max_req_len`, `kv_max_value_size`),
   * when it shows its configuration (`/v1/agent/self` with agent:read); else Consul's defaults apply.
   */
  txnMaxBytes?: number;
  maxValueBytes?: number;
  /** The agent refuses `/v1/kv` keys outside Consul 1.21.5's character set (`mapping/escape.ts`). */
  strictKeys?: boolean;
  leader: string;
  address: string;
}

export interface SessionSpec {
  name: string;
  /** Seconds, already clamped to the server's 10 s – 24 h range. */
  ttlSeconds: number;
  /** The node the session belongs to; default the agent's own node. */
  node?: string;
}

export interface SessionInfo {
  id: string;
  name: string;
  node: string;
  ttlSeconds: number;
  behavior: string;
  lockDelayNs: number;
}

/** What a client of the catalog sees of a service instance. */
export interface ServiceFields {
  /** Instance id, unique on its agent. */
  id: string;
  /** Service name. */
  name: string;
  address: string;
  port: number;
  tags: string[];
  meta: Record<string, string>;
}

/** A service instance to register on the agent, with its TTL check when it has a lease. */
export interface ServiceDefinition extends ServiceFields {
  check?: { id: string; name: string; ttlSeconds: number; deregisterCriticalAfterSeconds?: number; status: 'passing' | 'critical' };
}

/** A service instance as Consul serves it. */
export interface ServiceInstance extends ServiceFields {
  /** The node it is registered on. */
  node: string;
  /** Status of its TTL check, when it has one (`passing`, `warning`, `critical`). */
  checkStatus?: string;
}

/** Reads and writes against Consul. */
/** Options of a single PUT: at most one of them (Consul's KV PUT takes one). */
export interface PutOptions {
  acquire?: string;
  release?: string;
  cas?: number;
}

export interface TargetStore {
  info(): Promise<TargetInfo>;
  /** The limits in force: the server's op limit by version, Consul's defaults, then the configured overrides. */
  limits(): Promise<TargetLimits>;
  /**
   * Drops what `info()` and `limits()` read once, so the next call asks the agent again: over a migration's
   * weeks the agents are upgraded (or rolled back), and their op limit per txn changes with the release.
   */
  forgetInfo?(): void;
  /** Every key under `prefix` (`?keys`), sorted; `[]` when there is none. */
  listKeys(prefix: string, signal?: AbortSignal): Promise<string[]>;
  /** The folders right under `prefix` (`?keys&separator=/`), and whether the token's ACLs hid some. */
  listFolders(prefix: string): Promise<{ folders: string[]; filtered: boolean }>;
  /**
   * Values of the given keys, as bytes; keys that do not exist are absent from the result.
   * `hints` (the key list they come from, their expected sizes) let whole sub-prefixes be read at once.
   */
  readEntries(keys: readonly string[], signal?: AbortSignal, hints?: ReadHints): Promise<TargetEntry[]>;
  /** One key through `GET /v1/kv/<key>`, the way applications read it. */
  readKey(key: string): Promise<TargetEntry | undefined>;
  /** Apply one txn (all or nothing). Throws {@link TxnFailedError} on a failed check. */
  applyTxn(ops: readonly TxnOp[], signal?: AbortSignal): Promise<number | undefined>;
  /** A single `PUT /v1/kv/<key>`, for values too large for any txn; `release` writes and frees a key that session holds (false if it does not). */
  putKey(key: string, value: Buffer, options?: PutOptions): Promise<boolean>;
  deleteKey(key: string): Promise<void>;
  createSession(spec: SessionSpec): Promise<string>;
  /** Renew a session; `false` when Consul no longer knows it. */
  renewSession(id: string): Promise<boolean>;
  destroySession(id: string): Promise<void>;
  readSession(id: string): Promise<SessionInfo | undefined>;
  /**
   * The datacenter's sessions (id and name), in one read. With ACLs Consul
   * leaves out the sessions the token may not read: a session missing here may exist.
   */
  listSessions(): Promise<{ id: string; name: string }[]>;
  /**
   * Instances whose meta names the migration: `agent` lists the ones on the
   * configured agent (where the tool registers), `catalog` every node's.
   */
  listServiceInstances(migrationId: string, scope: 'agent' | 'catalog', signal?: AbortSignal): Promise<ServiceInstance[]>;
  /** Every instance on the agent the token may read, whoever registered it, by id in lower case (Consul's catalog takes ids case-insensitively). */
  agentServiceOwners(signal?: AbortSignal): Promise<Map<string, ServiceOwner>>;
  /** Registers (or replaces) a service instance on the agent. */
  registerService(service: ServiceDefinition): Promise<void>;
  /** Removes a service instance from the agent; `false` when the agent did not know it. */
  deregisterService(id: string): Promise<boolean>;
  /** Sets a TTL check; `false` when the agent does not know the check. */
  updateCheck(checkId: string, status: 'passing' | 'critical', output: string): Promise<boolean>;
}
