import { createRequire } from 'node:module';
import type * as Cockatiel from 'cockatiel';
import type * as Etcd3Module from 'etcd3';
import type { IWatchResponse } from 'etcd3';
import { MigrateError, ServerError, UsageError } from '../errors.js';
import { redactUrl } from '../report/redact.js';
import { formatKey } from '../report/keys.js';
import { sleep } from './consul-http.js';
import { EtcdChannel } from './etcd-channel.js';
import { RANGE, STATUS, toEntry, type RangePage, type RangeRequest } from './etcd-codec.js';
import { prefixEnd } from './key-range.js';
import { sameTlsFiles, tlsFailureHint, tlsReason, type TlsFiles, type TlsMaterial } from './tls.js';
import { DEFAULT_PAGE_KEYS, type KeyRange, type LeaseInfo, type ReadPagesOptions, type SourceEvent, type SourcePage, type SourceReader, type SourceStatus, type SourceWatch, type WatchMessage } from './types.js';

// etcd3 (with cockatiel, which it loads) is CommonJS. Imported from an ES module, Node first scans
// each of its files for export names, re-exports included: 30-40 ms more than requiring it. It is
// required when first used (watches, leases, writes): loading it compiles etcd's whole rpc.proto,
// 100-200 ms that a command which only reads etcd (verify, audit, copy) does not spend.
const require = createRequire(import.meta.url);
type Etcd3 = Etcd3Module.Etcd3;

export interface EtcdConnection {
  endpoints: string[];
  tls?: TlsMaterial;
  auth?: { username: string; password: string };
  /** Deadline of one unary call in ms. */
  timeoutMs?: number;
}

/**
 * A revision that was asked for has been compacted away: the start of a watch
 * (etcd then says the oldest revision still available) or a read pinned at a
 * revision etcd compacted meanwhile (etcd does not say how far; 0).
 */
export class SourceCompactedError extends MigrateError {
  constructor(readonly compactRevision: number, readonly requestedRevision: number) {
    super('etcd_compacted', 3, compactRevision > 0
      ? `etcd has compacted its history past revision ${requestedRevision} (oldest available: ${compactRevision}).`
      : `etcd has compacted revision ${requestedRevision}, which was being read (auto-compaction, or someone ran \`etcdctl compact\`).`, {
      hint: 'Run the command again (a copy with --resume); if it keeps happening, lengthen etcd\'s --auto-compaction-retention to cover the copy or verify.',
      details: { compactRevision, requestedRevision },
    });
  }
}

/** Reads a command makes at fresh revisions when etcd compacts each while it is read (auto-compaction on a busy cluster). */
export const COMPACTED_READ_ATTEMPTS = 3;

/**
 * Whether a read pinned at a revision, failed with `err` at its `attempt`-th
 * revision (from 1), starts again at a fresh one: etcd compacted the revision
 * while it was read, attempts are left, and no stop was asked for.
 */
export function readAgainAtFreshRevision(err: unknown, attempt: number, signal?: AbortSignal): boolean {
  return err instanceof SourceCompactedError && attempt < COMPACTED_READ_ATTEMPTS && !signal?.aborted;
}

/**
 * Where each page read of a range ends. etcd 3.4 walks all of `[key,
 * range_end)` for every limited Range it serves (to count it), so a prefix of
 * N keys read in pages of P costs it O(N²/P): 42 CPU seconds for 1,000,000
 * keys in pages of 2,000. Each read after a full page is bounded instead by the
 * end of a prefix the page's keys share, one byte shorter than their common
 * prefix (pages of `/app/00010000`…`/app/00019999` read next up to `/app/001`
 * excluded, not to the end of `/app/`). A read that comes back short has read
 * everything below its bound: the next one starts there, bounded by the next
 * shorter prefix, and so on up to the range's own end. Every key comes back
 * once and in order whatever the bounds; they only shorten etcd's walk.
 */
export class PageBounds {
  private last: Buffer | undefined;
  private level = 0;

  /** `end`: the range's exclusive end; empty for "to the end of the keyspace". */
  constructor(private readonly end: Buffer) {}

  /** After a read that etcd said has more (a full page) from `first` to `last`. */
  full(first: Buffer, last: Buffer): void {
    this.last = last;
    let common = 0;
    while (common < first.length && common < last.length && first[common] === last[common]) common++;
    this.level = common - 1;
  }

  /** After a read that held every key below its bound: the next bound is the next shorter prefix's end. */
  short(): void {
    this.level--;
  }

  /** The exclusive end of the next read starting at `start`: a bound above `start`, or the range's end. */
  next(start: Buffer): Buffer {
    for (; this.last && this.level >= 1; this.level--) {
      const bound = prefixEnd(this.last.subarray(0, this.level));
      if (bound.length === 0 || this.reachesEnd(bound)) break;
      if (bound.compare(start) > 0) return bound;
    }
    this.last = undefined;
    return this.end;
  }

  /** Whether the read to `bound` is the last one. */
  isEnd(bound: Buffer): boolean {
    return bound === this.end;
  }

  private reachesEnd(bound: Buffer): boolean {
    return this.end.length > 0 && bound.compare(this.end) >= 0;
  }
}

/** A range end as etcd takes it: "every key from `key` on" is the end "\0", not an empty one. */
function wireEnd(end: Buffer): Buffer {
  return end.length === 0 ? Buffer.from([0]) : end;
}

/** A page of values above this is followed by a smaller page. */
const PAGE_BYTES_TARGET = 8 * 1024 * 1024;
/** The keys of the first page `readPages` reads; each full page doubles the next, up to the size asked for. */
const FIRST_PAGE_KEYS = 500;
const RECEIVE_LIMIT_BYTES = 256 * 1024 * 1024;
/**
 * The `etcd3` client's channel. Keepalive pings while a call is open (the watch
 * always is): a connection that goes silent without closing (a partition, a
 * NAT or load balancer that dropped it, a peer gone without a reset) fails the
 * watch after 15 s, and the dual-run opens it again on a new connection; without
 * them it waited on the dead one for good, its checkpoint stalled. etcd refuses
 * pings more often than every 5 s (`--grpc-keepalive-min-time`), and pings with
 * no call open unless told otherwise, so neither is done.
 */
const GRPC_OPTIONS = {
  'grpc.max_receive_message_length': RECEIVE_LIMIT_BYTES,
  'grpc.max_send_message_length': 16 * 1024 * 1024,
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
  // A client of its own connections: grpc-js shares them between clients of the same address and options, and the
  // client made to replace one whose watch went silent would have used the same dead connection again.
  'grpc.use_local_subchannel_pool': 1,
};
/** Attempts at one page when the connection to etcd breaks (about 8 s of backoff in all). */
const PAGE_READ_ATTEMPTS = 6;

/**
 * The etcd adapter of {@link SourceReader}: reads (Status, Range) over
 * {@link EtcdChannel}; watches, leases and writes over the `etcd3` client,
 * created on first use.
 */
export class EtcdSource implements SourceReader {
  readonly endpoints: string;
  private readonly endpointCount: number;
  private readonly channel: EtcdChannel;
  private etcd3: Etcd3 | undefined;
  /** The TLS files the `etcd3` client is made with. */
  private tls: TlsFiles | undefined;
  /** `etcd3` clients replaced after the TLS files were renewed: closed with this source (calls may still run on them). */
  private readonly retired: Etcd3[] = [];
  /** How many times the TLS files were found renewed. */
  private tlsRenewals = 0;
  /** Whether this etcd has answered a watch's progress request (3.4 and later do): a watch's silence then means a dead connection. */
  private readonly watchProgress = { answered: false };
  private closed = false;

  constructor(private readonly connection: EtcdConnection) {
    this.tls = connection.tls;
    this.endpoints = connection.endpoints.map(redactUrl).join(',');
    this.endpointCount = connection.endpoints.length;
    this.channel = new EtcdChannel({ ...connection, timeoutMs: this.timeoutMs, maxMessageBytes: RECEIVE_LIMIT_BYTES });
  }

  private get timeoutMs(): number {
    return this.connection.timeoutMs ?? 10_000;
  }

  /** The `etcd3` client, for watches, leases and writes; made on first use, never after {@link close} (it would open a connection nothing closes). */
  get client(): Etcd3 {
    if (this.etcd3) return this.etcd3;
    if (this.closed) throw new Error('the etcd connection is closed');
    const { Etcd3 } = require('etcd3') as typeof Etcd3Module;
    const { noop } = require('cockatiel') as typeof Cockatiel;
    const { auth, endpoints } = this.connection;
    const tls = this.tls;
    const timeoutMs = this.timeoutMs;
    this.etcd3 = new Etcd3({
      hosts: endpoints,
      credentials: tls?.ca ? { rootCertificate: tls.ca, privateKey: tls.key, certChain: tls.cert } : undefined,
      auth: auth ? { username: auth.username, password: auth.password } : undefined,
      grpcOptions: GRPC_OPTIONS,
      defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + timeoutMs }),
      dialTimeout: timeoutMs,
      // Retries are the caller's: the default policy retries 3× and opens a breaker, which hides the real error.
      faultHandling: { global: noop, host: () => noop },
    });
    return this.etcd3;
  }

  close(): void {
    this.closed = true;
    this.channel.close();
    this.etcd3?.close();
    for (const client of this.retired.splice(0)) client.close();
  }

  /**
   * After TLS with etcd failed: when the TLS files were renewed in place (the
   * certificate the client started with expired, say), the next `etcd3` call is
   * made over a new client with the new files. The read channel renews its own.
   */
  private renewTls(): boolean {
    const tls = this.connection.tls?.reread?.();
    if (!tls || sameTlsFiles(tls, this.tls)) return false;
    this.tls = tls;
    this.tlsRenewals++;
    if (this.etcd3) this.retireClient(this.etcd3);
    return true;
  }

  /** The next call makes a new `etcd3` client (new connections); `client` stays open for the calls still on it, and is closed with this source. */
  private retireClient(client: Etcd3): void {
    if (this.etcd3 !== client) return;
    this.retired.push(client);
    this.etcd3 = undefined;
  }

  async status(): Promise<SourceStatus> {
    const status = await this.call('status', () => this.channel.unary(STATUS, undefined));
    return {
      version: status.version,
      clusterId: status.clusterId,
      memberId: status.memberId,
      leader: status.leader,
      revision: status.revision,
      dbSizeBytes: status.dbSize,
      endpoint: this.endpoints,
    };
  }

  async *readPages(range: KeyRange, options: ReadPagesOptions = {}): AsyncIterable<SourcePage> {
    // The pages grow to the size asked for from a small first one: what reads them starts at once
    // (planning and writing a copy's first 10,000 keys held its first txn back ~200 ms).
    let largest = options.pageKeys ?? DEFAULT_PAGE_KEYS;
    let pageKeys = Math.min(largest, FIRST_PAGE_KEYS);
    let revision = options.revision ?? 0;
    let start = range.start;
    const bounds = new PageBounds(range.end);
    let failures = 0;
    for (;;) {
      if (options.signal?.aborted) return;
      const bound = bounds.next(start);
      let response;
      try {
        response = await this.call(`read ${describeRange(range)}`, () =>
          this.readRange({ key: start, range_end: wireEnd(bound), limit: pageKeys, revision, keys_only: options.keysOnly ?? false }),
        revision);
      } catch (err) {
        // A page of very large values over the receive limit: retry the same position with fewer keys.
        if (pageKeys > 1 && /RESOURCE_EXHAUSTED|larger than max/i.test(String((err as Error).message))) {
          pageKeys = largest = Math.max(1, Math.floor(pageKeys / 2));
          continue;
        }
        // A reset connection or a restarting member: the same position at the same
        // pinned revision reads the same page, so repeating the read is safe.
        // (Not once this source is closed: the command is over, and retrying kept its process alive ~15 s after.)
        if (err instanceof MigrateError && err.code === 'etcd_unreachable' && !this.closed && ++failures < PAGE_READ_ATTEMPTS) {
          await sleep(Math.min(4_000, 125 * 2 ** failures), options.signal);
          continue;
        }
        throw err;
      }
      failures = 0;
      if (revision === 0) revision = response.revision;
      const entries = response.entries;
      if (entries.length > 0) yield { revision, entries };
      if (!response.more || entries.length === 0) {
        // Everything below the bound is read: the range is done, or the next read starts at the bound.
        if (bounds.isEnd(bound)) return;
        start = bound;
        bounds.short();
        continue;
      }
      const pageBytes = entries.reduce((sum, e) => sum + e.key.length + e.value.length, 0);
      if (pageBytes > PAGE_BYTES_TARGET && pageKeys > 1) pageKeys = largest = Math.max(1, Math.floor(pageKeys / 2));
      else pageKeys = Math.min(largest, pageKeys * 2);
      bounds.full(entries[0]!.key, entries[entries.length - 1]!.key);
      start = Buffer.concat([entries[entries.length - 1]!.key, Buffer.from([0])]);
    }
  }

  private readRange(request: RangeRequest): Promise<RangePage> {
    return this.channel.unary(RANGE, request);
  }

  async count(range: KeyRange, revision = 0): Promise<number> {
    const page = await this.call(`count ${describeRange(range)}`, () => this.readRange({ key: range.start, range_end: wireEnd(range.end), limit: 0, revision, keys_only: false, count_only: true }), revision);
    return page.count;
  }

  async modifiedSince(range: KeyRange, revision: number, since: number): Promise<boolean> {
    // Not count_only: etcd counts the range before it applies min_mod_revision, so such a count ignores it.
    const page = await this.call(`read ${describeRange(range)}`, () => this.readRange({ key: range.start, range_end: wireEnd(range.end), limit: 1, revision, keys_only: true, count_only: false, min_mod_revision: since }), revision);
    return page.entries.length > 0;
  }

  async readLease(id: string, options: { keys?: boolean } = {}): Promise<LeaseInfo> {
    const keys = options.keys ?? false;
    const response = await this.call(`read lease ${id}`, () => this.client.leaseClient.leaseTimeToLive({ ID: id, keys }));
    return { id, ttl: Number(response.TTL), grantedTtl: Number(response.grantedTTL), ...(keys ? { keys: response.keys ?? [] } : {}) };
  }

  async listLeases(): Promise<string[]> {
    const response = await this.call('list leases', () => this.client.leaseClient.leaseLeases());
    return response.leases.map((lease) => String(lease.ID));
  }

  async watch(range: KeyRange, fromRevision: number): Promise<SourceWatch> {
    const stream = await this.call('watch', () => this.client.watchClient.watch());
    const client = this.etcd3;
    // At run time this is a grpc-js ClientDuplexStream, which also pauses, resumes and cancels.
    return new EtcdWatch(stream as unknown as WatchStream, range, fromRevision, (err) => this.toError(err, 'watch'), {
      progress: this.watchProgress,
      // The connections are left to the calls still on them; the next call opens new ones (reads too: a partition
      // silenced them as well, and each read would wait out its deadline first).
      dead: () => {
        this.channel.reconnect();
        if (client) this.retireClient(client);
      },
      answers: () => this.channel.unary(STATUS, undefined).then(() => true, () => false),
    });
  }

  /**
   * Runs a write made with the `etcd3` client, repeated on another member only
   * when it reached none (no connection could be made to the one `etcd3`
   * picked): `etcd3` sends each call to a random endpoint and does not fail
   * over, and with one member of three down a third of the writes failed
   * (doctor's write probe, cutover's). Each attempt goes to a random member
   * again, and one refused costs a millisecond: 8 per endpoint leave a write
   * to a lone live member of two a chance of 1 in 65,536 to find none. A write
   * that may have reached etcd is not repeated: the caller sees its failure.
   */
  async unsent<T>(fn: () => Promise<T>): Promise<T> {
    const attempts = this.endpointCount > 1 ? this.endpointCount * 8 : 1;
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        if (attempt >= attempts || !/No connection established|ECONNREFUSED|failed to connect/i.test(String((err as Error)?.message ?? err))) throw err;
      }
    }
  }

  /** Runs one etcd call, turning the client's errors into the tool's typed errors. */
  private async call<T>(what: string, fn: () => Promise<T>, revision = 0): Promise<T> {
    // etcd3 sends each call to a random endpoint and, with its fault handling off, does not
    // fail over: one dead member of a cluster would fail a third of the calls. Try the others.
    const attempts = this.endpointCount > 1 ? this.endpointCount * 2 : 1;
    let renewals = this.tlsRenewals;
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        const error = this.toError(err, what, revision);
        // Once more after the TLS files were found renewed: that call is made with them.
        const renewed = this.tlsRenewals !== renewals;
        renewals = this.tlsRenewals;
        if (renewed) continue;
        if (attempt >= attempts || !(error instanceof MigrateError && error.code === 'etcd_unreachable')) throw error;
      }
    }
  }

  toError(err: unknown, what: string, revision = 0): Error {
    if (err instanceof MigrateError) return err;
    const message = String((err as Error)?.message ?? err);
    if (/authentication failed|invalid user ID or password/i.test(message)) {
      return new ServerError('etcd_auth_failed', `etcd at ${this.endpoints} refused the user name or password.`, {
        hint: 'Check ETCDCTL_USER / ETCDCTL_PASSWORD (or source.auth in migration.yaml).',
      });
    }
    if (/authentication is not enabled/i.test(message)) {
      return new UsageError('etcd_auth_not_enabled', `etcd at ${this.endpoints} has authentication turned off, and refuses the user name and password it was given.`, {
        hint: 'Unset ETCDCTL_USER / ETCDCTL_PASSWORD (or remove source.auth from migration.yaml) for this cluster, or turn on etcd auth (`etcdctl auth enable`).',
      });
    }
    if (/user name is empty/i.test(message)) {
      return new UsageError('etcd_auth_required', `etcd at ${this.endpoints} has authentication turned on, and the tool was given no user name.`, {
        hint: 'Set ETCDCTL_USER and ETCDCTL_PASSWORD (or source.auth in migration.yaml) to a user whose role can read the rule ranges (`migrate acl` prints one).',
      });
    }
    if (/invalid auth token/i.test(message)) {
      return new ServerError('etcd_auth_failed', `etcd at ${this.endpoints} rejected the session token (${message}).`, { hint: 'Run the command again; if it persists, check the etcd auth configuration.' });
    }
    if (/permission denied/i.test(message)) {
      return new ServerError('etcd_permission_denied', `etcd denied ${what}: the user's role lacks the permission.`, {
        hint: 'Grant the role `migrate acl` prints for etcd (read on every rule range), then run `migrate doctor`.',
        details: { operation: what },
      });
    }
    if (/required revision has been compacted/i.test(message)) {
      return new SourceCompactedError(0, revision);
    }
    if (/certificate|SSL|TLS|handshake/i.test(message)) {
      // Files renewed since the connection was made (its certificate expired, say): a failure to retry, as a
      // member that did not answer is (the dual-run goes on), not a setting to fix.
      if (this.renewTls()) {
        return new ServerError('etcd_unreachable', `TLS with etcd at ${this.endpoints} failed with the TLS files the connection was made with (${tlsReason(message)}); they were renewed since, and the next connection uses the new ones.`, {
          hint: 'The tool retries with the renewed files; if it keeps failing, check ETCDCTL_CERT / ETCDCTL_KEY (or source.tls).',
          details: { endpoints: this.endpoints },
        });
      }
      // A plain listener named with https:// drops the handshake before it completes.
      const dropped = /before secure TLS connection was established|wrong version number/i.test(message);
      return new ServerError('etcd_tls_failed', `TLS with etcd at ${this.endpoints} failed: ${tlsReason(message)}.`, {
        hint: dropped
          ? 'The TLS handshake did not complete: if this etcd listens without TLS, name it with http:// and unset its TLS files (ETCDCTL_CACERT / ETCDCTL_CERT / ETCDCTL_KEY, or source.tls); else check them.'
          : tlsFailureHint('etcd', message) ?? 'Check ETCDCTL_CACERT (or source.tls.ca): it must be the CA that signed the server certificate.',
      });
    }
    if (/Received HTTP status code|UNAVAILABLE|ECONNREFUSED|No connection established|failed to connect|Deadline exceeded|DEADLINE_EXCEEDED|GRPCConnectFailed|ENOTFOUND|ECONNRESET|closed/i.test(message) || /GRPC(Unavailable|ConnectFailed|DeadlineExceeded)/.test((err as Error)?.constructor?.name ?? '')) {
      // grpc-js ends its reason with an empty "Resolution note: "; a protocol error means something else answered.
      const reason = message.split('\n')[0]!.replace(/\.?\s*Resolution note:\s*$/, '');
      const otherServer = /Protocol error|Received HTTP status code/i.test(reason);
      // A plain listener named with https:// resets the TLS handshake.
      const tlsToPlain = /ECONNRESET|closed/i.test(reason) && this.endpoints.includes('https://');
      return new ServerError('etcd_unreachable', `etcd at ${this.endpoints} is unreachable (${reason}).`, {
        hint: otherServer
          ? 'Something answered that does not speak etcd\'s gRPC (another service\'s port, such as Consul\'s, or a TLS endpoint named with http://): fix the endpoints (source.endpoints, --etcd-endpoints or ETCDCTL_ENDPOINTS).'
          : tlsToPlain
            ? 'The connection was reset: if this etcd listens without TLS, name it with http://; else start etcd or fix the endpoints (source.endpoints, --etcd-endpoints or ETCDCTL_ENDPOINTS).'
            : 'Start etcd or fix the endpoints (source.endpoints, --etcd-endpoints or ETCDCTL_ENDPOINTS).',
        details: { endpoints: this.endpoints },
      });
    }
    return new ServerError('etcd_failed', `etcd failed ${what}: ${message.split('\n')[0]}`, { cause: err });
  }
}

function describeRange(range: KeyRange): string {
  return `[${formatKey(range.start)}, ${range.end.length ? formatKey(range.end) : 'end'})`;
}

interface WatchStream {
  write(request: unknown): boolean;
  on(event: 'data', listener: (response: IWatchResponse) => void): unknown;
  on(event: 'error', listener: (err: Error) => void): unknown;
  on(event: 'end', listener: () => void): unknown;
  pause(): unknown;
  resume(): unknown;
  end(): unknown;
  cancel?: () => void;
}

/**
 * How long a watch may stay silent, while progress is asked of it every
 * second, before its connection is taken for dead: one that went silent
 * without closing (a partition, a dropped NAT entry) failed nothing, and the
 * dual-run waited on it for good. Keepalive pings (15 s) find most such
 * connections first; not one that went silent before etcd confirmed the watch.
 */
const WATCH_SILENT_MS = 30_000;
/**
 * How long a confirmed watch may stay silent while etcd answers other requests:
 * a revision of many keys (a delete of a large prefix), whose previous values
 * etcd reads one by one, took 30 s for 20,000 keys, and a watch opened again
 * after 30 s made etcd start that work over, for good (replication stalled).
 */
const WATCH_BUSY_MAX_MS = 10 * 60_000;
/** A gap this long between two progress requests means this process did not run meanwhile (stopped, a paused VM): etcd's silence counts from then. */
const WATCH_PAUSED_MS = 5_000;

/** What a watch shares with its source: whether etcd answers progress requests, and what to do about a dead connection. */
interface WatchLiveness {
  progress: { answered: boolean };
  dead: () => void;
  /** Whether etcd answers a request now (its status): a silent watch then waits on a busy etcd, not a dead connection. */
  answers: () => Promise<boolean>;
}

/**
 * etcd releases that answer a watch progress request with their current
 * revision ahead of events still queued for the watch (etcd-io/etcd#15220,
 * fixed in 3.4.31 and 3.5.13): the answer skips the watch's event channel, so a
 * watch that is behind (a slow reader, a busy etcd) hears of revisions whose
 * events it has not had yet.
 */
export function unorderedProgress(version: string): boolean {
  const match = /^(\d+)\.(\d+)\.(\d+)/.exec(version);
  if (!match) return false;
  const [major, minor, patch] = [Number(match[1]), Number(match[2]), Number(match[3])];
  return major === 3 && ((minor === 4 && patch < 31) || (minor === 5 && patch < 13) || minor < 4);
}

/**
 * One raw etcd watch: the `etcd3` Watcher drops `compact_revision` and
 * reconnects on its own, which would hide both compaction and gaps. Here a
 * cancel becomes {@link SourceCompactedError} and any stream failure ends the
 * iteration with a typed error, so the caller resumes from its own position.
 */
export class EtcdWatch implements SourceWatch {
  private readonly queue: WatchMessage[] = [];
  private failure: Error | undefined;
  private ended = false;
  private wake: (() => void) | undefined;
  private paused = false;
  private created = false;
  /** Revision messages in the queue (progress notifications do not count: see {@link buffered}). */
  private queuedRevisions = 0;
  /** etcd's revision in the last response's header. */
  private latest = 0;
  /** When etcd last sent anything on this watch, and when progress was last asked of it. */
  private heardAt = Date.now();
  private askedAt = Date.now();
  /** When etcd last sent anything on this watch ({@link heardAt} also counts etcd answering a probe meanwhile). */
  private sentAt = Date.now();
  private probing = false;

  constructor(private readonly stream: WatchStream, range: KeyRange, private readonly fromRevision: number, toError: (err: unknown) => Error, private readonly liveness: WatchLiveness) {
    stream.on('data', (response) => this.onData(response));
    stream.on('error', (err) => this.finish(toError(err)));
    stream.on('end', () => this.finish(undefined));
    stream.write({
      create_request: {
        key: range.start,
        range_end: wireEnd(range.end),
        start_revision: fromRevision,
        progress_notify: true,
        // The previous lease of a key tells which session to release when it moves or loses its lease.
        prev_kv: true,
      },
    });
  }

  private onData(response: IWatchResponse): void {
    this.heardAt = Date.now();
    this.sentAt = this.heardAt;
    if (response.canceled) {
      const compact = Number(response.compact_revision ?? 0);
      this.finish(compact > 0 ? new SourceCompactedError(compact, this.fromRevision) : new ServerError('etcd_watch_canceled', `etcd canceled the watch: ${response.cancel_reason || 'no reason given'}.`));
      return;
    }
    const header = Number(response.header?.revision ?? 0);
    this.latest = Math.max(this.latest, header);
    if (response.created) {
      this.created = true;
      return;
    }
    const events = response.events ?? [];
    if (events.length === 0) {
      // Progress notifications are only sent for synced watchers: every revision up to `header` has been delivered.
      if (this.created) {
        this.liveness.progress.answered = true;
        this.push({ kind: 'progress', revision: header, requested: Number(response.watch_id) === -1 });
      }
      return;
    }
    let current: WatchMessage & { kind: 'revision' } | undefined;
    for (const event of events) {
      const entry = toEntry(event.kv);
      if (!current || current.revision !== entry.modRevision) {
        if (current) this.push(current);
        current = { kind: 'revision', revision: entry.modRevision, events: [] };
      }
      const change: SourceEvent = { type: event.type === 'Delete' ? 'delete' : 'put', entry };
      if (event.prev_kv) change.previous = toEntry(event.prev_kv);
      current.events.push(change);
    }
    if (current) this.push(current);
  }

  private push(message: WatchMessage): void {
    // etcd never splits a revision across responses (no `fragment`), so a revision pushed here is whole.
    this.queue.push(message);
    if (message.kind === 'revision') this.queuedRevisions++;
    if (this.queue.length > 10_000 && !this.paused) {
      this.paused = true;
      this.stream.pause();
    }
    this.wake?.();
  }

  private finish(err: Error | undefined): void {
    if (this.ended) return;
    this.ended = true;
    this.failure = err;
    this.wake?.();
  }

  /**
   * Revision messages waiting. A queued progress notification must not count:
   * the consumer holds its batch while more is buffered, and a progress
   * notification after the last revision of a burst would leave that batch
   * unsent until the next write (seen under the fault proxy: lag stuck).
   */
  buffered(): number {
    return this.queuedRevisions;
  }

  /**
   * Asks etcd for a progress notification. A watch silent for
   * {@link WATCH_SILENT_MS} meanwhile (not held back by a full queue) ends with
   * `etcd_unreachable`, and the source's next call opens a new connection: if
   * etcd never confirmed the watch, or if it answers progress requests (an
   * older etcd that does not stays silent on an idle range). A confirmed watch
   * goes on while etcd answers a status request (up to {@link WATCH_BUSY_MAX_MS}).
   */
  requestProgress(): void {
    if (this.ended) return;
    const now = Date.now();
    // Not asked for a while: this process did not run (SIGSTOP, a paused VM), and etcd had no request to answer.
    if (now - this.askedAt > WATCH_PAUSED_MS) {
      this.heardAt = now;
      this.sentAt = now;
    }
    this.askedAt = now;
    if (this.takenForDead(now)) return;
    this.stream.write({ progress_request: {} });
  }

  /** Whether the watch's silence ends it now (see {@link requestProgress}); a probe of etcd may end it later. */
  private takenForDead(now: number): boolean {
    if (this.paused || this.probing || (this.created && !this.liveness.progress.answered)) return false;
    const sentMs = now - this.sentAt;
    if (this.created && sentMs > WATCH_BUSY_MAX_MS) return this.dead(sentMs, ' (etcd answered other requests all along)');
    const silentMs = now - this.heardAt;
    if (silentMs <= WATCH_SILENT_MS) return false;
    if (!this.created) return this.dead(silentMs, '');
    // A confirmed watch: etcd answering a request says it is busy on this watch (a large revision), not gone.
    this.probing = true;
    void this.liveness.answers().then((answers) => {
      this.probing = false;
      if (answers) this.heardAt = Date.now();
      else this.dead(Date.now() - this.sentAt, ' nor a status request');
    });
    return false;
  }

  private dead(silentMs: number, why: string): true {
    if (!this.ended) {
      this.liveness.dead();
      this.finish(new ServerError('etcd_unreachable', `etcd's watch answered nothing for ${Math.round(silentMs / 1000)} s though progress was asked every second${why}: its connection is taken for dead (a partition, or a connection dropped on the way without a reset), and the watch is opened again on a new one.`));
    }
    return true;
  }

  latestRevision(): number {
    return this.latest;
  }

  async close(): Promise<void> {
    this.finish(undefined);
    this.stream.cancel?.();
    this.stream.end();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<WatchMessage> {
    for (;;) {
      const message = this.queue.shift();
      if (message) {
        if (message.kind === 'revision') this.queuedRevisions--;
        if (this.paused && this.queue.length < 1_000) {
          this.paused = false;
          this.stream.resume();
        }
        yield message;
        continue;
      }
      if (this.ended) {
        if (this.failure) throw this.failure;
        return;
      }
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }
}
