import pLimit from 'p-limit';
import { UsageError } from '../errors.js';
import { formatKey } from '../report/keys.js';
import { ConsulHttp, ConsulResponseError, INVALID_KEY_NAME, consulErrorFor, txnError, withRetries, type ConsulConnection, type RetryOptions } from './consul-http.js';
import { keysOf, packReads, planReads, sortKeys, readLimits, readTxnBody, type ReadHints, type ReadOp } from './consul-reads.js';
import { scanReadResults, txnIndex } from './txn-results.js';
import { DEFAULT_MAX_VALUE_BYTES, DEFAULT_TXN_MAX_BYTES, serializeTxn, txnMaxOpsForVersion, wireOpBytes, type TargetLimits } from './txn-batcher.js';
import { checkIdOf, META_MIGRATION, META_RULE, type ServiceOwner } from '../services/registration.js';
import type { ServiceDefinition, ServiceInstance, PutOptions, SessionInfo, SessionSpec, TargetEntry, TargetInfo, TargetStore, TxnOp } from './types.js';

export interface ConsulTargetOptions {
  /** Overrides from `target.limits` in migration.yaml. */
  limits?: Partial<TargetLimits>;
  retry?: RetryOptions;
  /** Concurrent read txns when reading values in chunks. */
  readConcurrency?: number;
}

/** A value larger than the target accepts: refused before any request is sent. */
export class ValueTooLargeError extends UsageError {
  constructor(key: string, size: number, limit: number) {
    super('value_too_large', `The value of ${formatKey(key)} is ${size} bytes, over the target's limit of ${limit} bytes (kv_max_value_size); it was not sent.`, {
      hint: 'Shrink or split the value in etcd, or raise limits.kv_max_value_size on the Consul servers: the tool reads it from the agent (set target.limits.maxValueBytes to match only where the token lacks agent:read).',
      details: { key: formatKey(key), size, limit },
    });
  }
}

/**
 * The limits an agent's HTTP API enforces, from its runtime configuration
 * (`DebugConfig` of `/v1/agent/self`). A txn body may be as long as the larger
 * of `txn_max_req_len` and `kv_max_value_size` (Consul's `convertOps`); each
 * value at most `kv_max_value_size`. Missing or odd fields: nothing is claimed.
 */
export function enforcedLimits(debug: AgentSelf['DebugConfig']): Pick<TargetInfo, 'txnMaxBytes' | 'maxValueBytes'> {
  const size = (v: unknown) => (typeof v === 'number' && Number.isSafeInteger(v) && v > 0 ? v : undefined);
  const txn = size(debug?.TxnMaxReqLen);
  const value = size(debug?.KVMaxValueSize);
  return {
    ...(txn !== undefined || value !== undefined ? { txnMaxBytes: Math.max(txn ?? 0, value ?? 0) } : {}),
    ...(value !== undefined ? { maxValueBytes: value } : {}),
  };
}

/** What the tool reads of `/v1/agent/self`. */
interface AgentSelf {
  Config?: { Version?: string; Datacenter?: string; NodeName?: string };
  DebugConfig?: { TxnMaxReqLen?: unknown; KVMaxValueSize?: unknown };
}

/** A KV entry as Consul's HTTP API returns it (values base64). */
export interface WireEntry {
  Key: string;
  Value: string | null;
  Flags: number;
  ModifyIndex: number;
  Session?: string;
}

/** A key every agent serves but one with Consul 1.21.5's key rule (the `:`). */
const KEY_RULE_PROBE = 'migrate-key-rule-probe:';

/** Path of a key under `/v1/kv/`: every segment percent-encoded (Consul decodes it back). */
export function kvPath(key: string): string {
  return `/v1/kv/${key.split('/').map(encodeURIComponent).join('/')}`;
}

export function toEntry(wire: WireEntry): TargetEntry {
  const entry: TargetEntry = {
    key: wire.Key,
    value: wire.Value ? Buffer.from(wire.Value, 'base64') : Buffer.alloc(0),
    flags: wire.Flags ?? 0,
    modifyIndex: wire.ModifyIndex,
  };
  if (wire.Session) entry.session = wire.Session;
  return entry;
}

/** The entries of a read txn's answer (status 200). */
function readResults(body: Buffer): TargetEntry[] {
  return scanReadResults(body) ?? ((JSON.parse(body.toString('utf8')) as { Results: { KV: WireEntry }[] | null }).Results ?? []).map((r) => toEntry(r.KV));
}

/** The entries whose key `ops` asked for: all of them, in order, unless keys came or went under a tree since the listing. */
function askedOnly(entries: TargetEntry[], ops: readonly ReadOp[]): TargetEntry[] {
  // Walked in place: a read of 100,000 keys spent 15 ms making the list of asked keys only to find them all.
  let i = 0;
  const next = (key: string) => {
    if (entries[i]?.key !== key) return false;
    i++;
    return true;
  };
  const asExpected = ops.every((op) => (op.verb === 'get' ? next(op.key) : op.keys.every(next)));
  if (asExpected && i === entries.length) return entries;
  const wanted = new Set(keysOf(ops));
  return entries.filter((e) => wanted.has(e.key));
}

/** The Consul adapter of {@link TargetStore}. */
export class ConsulTarget implements TargetStore {
  readonly http: ConsulHttp;
  private infoPromise: Promise<TargetInfo> | undefined;
  private agentSelfPromise: Promise<AgentSelf | undefined> | undefined;
  private strictKeysPromise: Promise<boolean> | undefined;
  private readonly limitsOverride: Partial<TargetLimits>;
  private readonly retry: RetryOptions;
  private readonly readConcurrency: number;

  constructor(connection: ConsulConnection | ConsulHttp, options: ConsulTargetOptions = {}) {
    this.http = connection instanceof ConsulHttp ? connection : new ConsulHttp(connection);
    this.limitsOverride = options.limits ?? {};
    this.retry = options.retry ?? {};
    this.readConcurrency = options.readConcurrency ?? 4;
  }

  /** Calls `listener` before each retry of a request (this target's and its other datacenters'): a long-running command says Consul is not answering. */
  observeRetries(listener: NonNullable<RetryOptions['onRetry']>): void {
    this.retry.onRetry = listener;
  }

  get address(): string {
    return this.http.address;
  }

  close(): void {
    this.http.close();
  }

  forgetInfo(): void {
    this.infoPromise = undefined;
    this.agentSelfPromise = undefined;
    this.strictKeysPromise = undefined;
  }

  info(): Promise<TargetInfo> {
    this.infoPromise ??= this.readInfo().catch((err) => {
      this.infoPromise = undefined;
      throw err;
    });
    return this.infoPromise;
  }

  /**
   * The same agent, addressing another datacenter (`?dc=`): KV, txns, sessions
   * and catalog reads go to that datacenter's servers (issue 11).
   */
  forDatacenter(datacenter: string | undefined): ConsulTarget {
    return new ConsulTarget(this.http.withDatacenter(datacenter), { limits: this.limitsOverride, retry: this.retry, readConcurrency: this.readConcurrency });
  }

  private async readInfo(): Promise<TargetInfo> {
    if (this.http.datacenterName) await this.refuseUnknownDatacenter(this.http.datacenterName);
    const leader = JSON.parse((await this.request({ method: 'GET', path: '/v1/status/leader' })).body.toString('utf8')) as string;
    // `/v1/agent/self` needs agent:read; without it the version (and so the op limit) falls back to the safe 64.
    // The agent checks a txn's op count, so its version decides the limit whatever datacenter the txn goes to.
    const [self, strictKeys] = await Promise.all([this.agentSelf(), this.strictKeys()]);
    const config = self?.Config ?? {};
    const version = config.Version ?? 'unknown';
    let datacenter = config.Datacenter ?? '';
    let nodeName = config.NodeName ?? '';
    const enforced = enforcedLimits(self?.DebugConfig);
    const addressed = this.http.datacenterName;
    if (addressed && addressed !== datacenter) {
      // Another datacenter: a session there must name one of its nodes; its servers are the ones that stay.
      datacenter = addressed;
      nodeName = await this.serverNode();
    }
    return { version, datacenter, nodeName, txnMaxOps: txnMaxOpsForVersion(version === 'unknown' ? undefined : version), ...enforced, strictKeys, leader, address: this.address };
  }

  /**
   * A datacenter the agent's WAN federation does not know is a typo (`--datacenter`,
   * `target.datacenter`), refused at once: requests to it fail as if its servers were
   * down, and those are retried for a minute. A token that may not list them: not checked.
   */
  private async refuseUnknownDatacenter(datacenter: string): Promise<void> {
    let known: string[];
    try {
      known = await this.forDatacenter(undefined).datacenters();
    } catch (err) {
      if (err instanceof ConsulResponseError && err.status === 403) return;
      throw err;
    }
    if (known.includes(datacenter)) return;
    throw new UsageError('datacenter_unknown', `The Consul agent at ${this.address} knows no datacenter ${datacenter} (it knows ${known.join(', ')}).`, {
      hint: 'Fix --datacenter or target.datacenter in migration.yaml, or join that datacenter\'s servers to the WAN federation (`consul join -wan`).',
      details: { datacenter, known },
    });
  }

  /** The datacenters the agent's WAN federation knows (`/v1/catalog/datacenters`). */
  async datacenters(): Promise<string[]> {
    const response = await this.request({ method: 'GET', path: '/v1/catalog/datacenters' });
    return JSON.parse(response.body.toString('utf8')) as string[];
  }

  /** A server node of the addressed datacenter (the first by name, so every run picks the same). */
  private async serverNode(): Promise<string> {
    const response = await this.request({ method: 'GET', path: '/v1/catalog/service/consul' });
    const nodes = (JSON.parse(response.body.toString('utf8')) as { Node: string }[]).map((n) => n.Node).sort();
    if (!nodes[0]) {
      throw new ConsulResponseError('consul_no_server_node', 500, `Consul datacenter ${this.http.datacenterName} lists no server in its catalog (service "consul"); sessions there need a node.`, '', 'Check that the datacenter\'s servers are up and that the token may read nodes and the "consul" service there.');
    }
    return nodes[0];
  }

  /**
   * The byte limits and the key rule of the agent the tool talks to, which it
   * enforces on every request whatever datacenter that addresses; no byte
   * limits when the token may not read the agent (the key rule is asked of
   * any token). Asks nothing of the addressed datacenter.
   */
  async agentLimits(): Promise<Pick<TargetInfo, 'txnMaxBytes' | 'maxValueBytes' | 'strictKeys'>> {
    const [self, strictKeys] = await Promise.all([this.agentSelf(), this.strictKeys()]);
    return { ...enforcedLimits(self?.DebugConfig), strictKeys };
  }

  /**
   * Whether the agent refuses `/v1/kv` keys outside Consul 1.21.5's character set
   * (reference §A.1.1): a GET of a key it would refuse, which it checks before ACLs
   * and before looking the key up. Asked, not told by the version: the rule shipped
   * in 1.21.5 and in Enterprise backports, and `disable_http_unprintable_char_filter`
   * turns it off. Read once; writes nothing.
   */
  private strictKeys(): Promise<boolean> {
    this.strictKeysPromise ??= this.http.withDatacenter(undefined).request({ method: 'GET', path: kvPath(KEY_RULE_PROBE), accept: [403, 404, 500] }).then(
      (answer) => answer.status === 500 && INVALID_KEY_NAME.test(answer.body.toString('utf8').trim()),
    ).catch((err: unknown) => {
      this.strictKeysPromise = undefined;
      throw err;
    });
    return this.strictKeysPromise;
  }

  /** `/v1/agent/self` of the agent itself, or undefined without agent:read; read once (info and agentLimits both need it). */
  private agentSelf(): Promise<AgentSelf | undefined> {
    this.agentSelfPromise ??= this.http.withDatacenter(undefined).request({ method: 'GET', path: '/v1/agent/self', accept: [403] }).then(
      (self) => {
        if (self.status === 200) return JSON.parse(self.body.toString('utf8')) as AgentSelf;
        // A token Consul does not know is refused here too: that is not a token without agent:read.
        const refused = consulErrorFor(this.address, 'GET', '/v1/agent/self', self.status, self.body);
        if (refused.code === 'consul_token_refused') throw refused;
        return undefined;
      },
    ).catch((err: unknown) => {
      this.agentSelfPromise = undefined;
      throw err;
    });
    return this.agentSelfPromise;
  }

  /** The limits in force: the overrides of migration.yaml, else the server's op limit by version and the agent's byte limits, else Consul's defaults. */
  async limits(): Promise<TargetLimits> {
    const info = await this.info();
    return {
      txnMaxOps: this.limitsOverride.txnMaxOps ?? info.txnMaxOps,
      txnMaxBytes: this.limitsOverride.txnMaxBytes ?? info.txnMaxBytes ?? DEFAULT_TXN_MAX_BYTES,
      maxValueBytes: this.limitsOverride.maxValueBytes ?? info.maxValueBytes ?? DEFAULT_MAX_VALUE_BYTES,
    };
  }

  async listFolders(prefix: string): Promise<{ folders: string[]; filtered: boolean }> {
    const response = await this.request({ method: 'GET', path: kvPath(prefix), query: { keys: true, separator: '/', consistent: true }, accept: [403, 404] });
    // A list the ACLs left empty is a 404 that says so too.
    const filtered = response.status === 403 || response.headers['x-consul-results-filtered-by-acls'] === 'true';
    if (response.status !== 200) return { folders: [], filtered };
    const keys = JSON.parse(response.body.toString('utf8')) as string[];
    return { folders: sortKeys(keys.filter((k) => k.endsWith('/'))), filtered };
  }

  async listKeys(prefix: string, signal?: AbortSignal): Promise<string[]> {
    const response = await this.request({ method: 'GET', path: kvPath(prefix), query: { keys: true, consistent: true }, accept: [404], signal });
    // Before the 404: a prefix whose every key the ACLs hide answers 404, not an empty list, and says it filtered.
    this.refuseFiltered(response.headers, prefix);
    if (response.status === 404) return [];
    const keys = JSON.parse(response.body.toString('utf8')) as string[];
    return sortKeys(keys);
  }

  async readEntries(keys: readonly string[], signal?: AbortSignal, hints: ReadHints = {}): Promise<TargetEntry[]> {
    const { txnMaxOps, txnMaxBytes } = await this.limits();
    const limits = readLimits(txnMaxOps, txnMaxBytes);
    const limit = pLimit(this.readConcurrency);
    const txns = packReads(planReads(keys, hints, limits), txnMaxOps, limits);
    const results = await Promise.all(txns.map((txn) => limit(() => this.readTxn(txn, signal))));
    return results.flat();
  }

  /**
   * One read-only txn. A tree's keys that were not asked for (written since the
   * listing) are dropped; a `get` of a key deleted since it was listed fails the
   * txn, so those are dropped and the rest read again.
   */
  private async readTxn(ops: ReadOp[], signal?: AbortSignal): Promise<TargetEntry[]> {
    let remaining = ops;
    while (remaining.length > 0) {
      const response = await this.request({ method: 'PUT', path: '/v1/txn', query: { consistent: true }, body: readTxnBody(remaining), accept: [409], signal });
      if (response.status === 200) {
        const entries = readResults(response.body);
        return ops.some((op) => op.verb === 'get-tree') ? askedOnly(entries, remaining) : entries;
      }
      const parsed = JSON.parse(response.body.toString('utf8')) as { Errors: { OpIndex: number; What: string }[] | null };
      const missing = new Set((parsed.Errors ?? []).filter((e) => /doesn't exist/.test(e.What)).map((e) => e.OpIndex));
      if (missing.size === 0) throw txnError((parsed.Errors ?? []).map((e) => ({ opIndex: e.OpIndex, what: e.What })), 'PUT', '/v1/txn');
      remaining = remaining.filter((_, i) => !missing.has(i));
    }
    return [];
  }

  /**
   * Every entry under `prefix` through one read-only txn `get-tree`. The txn
   * endpoint reaches keys that `GET /v1/kv` cannot address (a leading `/`,
   * reference §H), so verify uses it to find stranded keys. Unpaginated, values
   * included: only for prefixes expected to hold (almost) nothing.
   */
  async readTree(prefix: string, signal?: AbortSignal): Promise<TargetEntry[]> {
    const body = JSON.stringify([{ KV: { Verb: 'get-tree', Key: prefix } }]);
    const response = await this.request({ method: 'PUT', path: '/v1/txn', query: { consistent: true }, body, signal });
    return readResults(response.body);
  }

  async readKey(key: string): Promise<TargetEntry | undefined> {
    const response = await this.request({ method: 'GET', path: kvPath(key), query: { consistent: true }, accept: [404] });
    if (response.status === 404) return undefined;
    const [entry] = JSON.parse(response.body.toString('utf8')) as WireEntry[];
    return entry ? toEntry(entry) : undefined;
  }

  /** Applies one txn; resolves to the index its writes took (their ModifyIndex), when Consul says it. */
  async applyTxn(ops: readonly TxnOp[], signal?: AbortSignal): Promise<number | undefined> {
    const limits = await this.limits();
    if (ops.length === 0) return undefined;
    if (ops.length > limits.txnMaxOps) {
      throw new RangeError(`a txn of ${ops.length} ops exceeds the target's limit of ${limits.txnMaxOps}; batch it first`);
    }
    let bytes = 2;
    for (const op of ops) {
      if ('value' in op && op.value.length > limits.maxValueBytes) throw new ValueTooLargeError(op.key, op.value.length, limits.maxValueBytes);
      bytes += wireOpBytes(op);
    }
    if (bytes - 1 > limits.txnMaxBytes) {
      throw new RangeError(`a txn of ${bytes} bytes exceeds the target's limit of ${limits.txnMaxBytes}; batch it first`);
    }
    const response = await this.request({ method: 'PUT', path: '/v1/txn', body: serializeTxn(ops), signal });
    // Each result is an entry as the txn left it (values blanked): the written ones carry the txn's index, the newest.
    return txnIndex(response.body);
  }

  async putKey(key: string, value: Buffer, options: PutOptions = {}): Promise<boolean> {
    const { maxValueBytes } = await this.limits();
    if (value.length > maxValueBytes) throw new ValueTooLargeError(key, value.length, maxValueBytes);
    const response = await this.request({ method: 'PUT', path: kvPath(key), query: { acquire: options.acquire, release: options.release, cas: options.cas }, body: value });
    return response.body.toString('utf8').trim() === 'true';
  }

  async deleteKey(key: string): Promise<void> {
    if (key === '') throw new RangeError('refusing to DELETE the empty key: it would address the whole KV store');
    await this.request({ method: 'DELETE', path: kvPath(key) });
  }

  async createSession(spec: SessionSpec): Promise<string> {
    // Behavior delete and LockDelay 0s are not configurable (DESIGN §3); `Checks: []` drops serfHealth
    // so a failing agent cannot wipe every leased key.
    // In another datacenter than the agent's, the session names a node there (the agent's own is not in its catalog).
    const node = spec.node ?? (this.http.datacenterName ? (await this.info()).nodeName : undefined);
    const body = JSON.stringify({ Name: spec.name, TTL: `${spec.ttlSeconds}s`, Behavior: 'delete', LockDelay: '0s', Checks: [], ...(node ? { Node: node } : {}) });
    const response = await this.request({ method: 'PUT', path: '/v1/session/create', body });
    return (JSON.parse(response.body.toString('utf8')) as { ID: string }).ID;
  }

  async renewSession(id: string): Promise<boolean> {
    const response = await this.request({ method: 'PUT', path: `/v1/session/renew/${encodeURIComponent(id)}`, accept: [404] });
    return response.status !== 404;
  }

  async destroySession(id: string): Promise<void> {
    await this.request({ method: 'PUT', path: `/v1/session/destroy/${encodeURIComponent(id)}` });
  }

  async readSession(id: string): Promise<SessionInfo | undefined> {
    const response = await this.request({ method: 'GET', path: `/v1/session/info/${encodeURIComponent(id)}`, query: { consistent: true } });
    const [session] = JSON.parse(response.body.toString('utf8')) as { ID: string; Name: string; Node: string; TTL: string; Behavior: string; LockDelay: number }[];
    // Consul answers a session the token may not read as if it did not exist, but says it filtered
    // it: taken for gone, verify reported a live session as session-gone (drift, exit 1).
    if (!session && response.headers['x-consul-results-filtered-by-acls'] === 'true') {
      throw new ConsulResponseError('consul_permission_denied', 403, `Consul hid session ${id} from the token (session:read on its node is missing).`, '', 'Grant session_prefix "" read (the verifier policy `migrate acl` prints has it; the migrator\'s has write), then run `migrate doctor`.');
    }
    if (!session) return undefined;
    return { id: session.ID, name: session.Name, node: session.Node, ttlSeconds: parseDurationSeconds(session.TTL), behavior: session.Behavior, lockDelayNs: session.LockDelay };
  }

  async listSessions(): Promise<{ id: string; name: string }[]> {
    const response = await this.request({ method: 'GET', path: '/v1/session/list', query: { consistent: true } });
    return (JSON.parse(response.body.toString('utf8')) as { ID: string; Name?: string }[]).map((s) => ({ id: s.ID, name: s.Name ?? '' }));
  }

  async listServiceInstances(migrationId: string, scope: 'agent' | 'catalog', signal?: AbortSignal): Promise<ServiceInstance[]> {
    const mine = JSON.stringify(migrationId);
    if (scope === 'agent') {
      const [services, checks] = await Promise.all([
        this.request({ method: 'GET', path: '/v1/agent/services', query: { filter: `Meta[${JSON.stringify(META_MIGRATION)}] == ${mine}` }, signal }),
        this.request({ method: 'GET', path: '/v1/agent/checks', query: { filter: `CheckID contains "etcd-migrate:"` }, signal }),
      ]);
      const node = (await this.info()).nodeName;
      const statusOf = new Map(Object.values(JSON.parse(checks.body.toString('utf8')) as Record<string, { CheckID: string; ServiceID: string; Status: string }>).map((c) => [c.ServiceID, c.Status]));
      return Object.values(JSON.parse(services.body.toString('utf8')) as Record<string, WireService>).map((s) => instanceOf(s, node, statusOf.get(s.ID)));
    }
    // A token scoped to the rules' service names does not see the others (Consul's own `consul` service
    // among them): a filtered list is expected; a filtered instance list of a name is not.
    const list = await this.request({ method: 'GET', path: '/v1/catalog/services', signal });
    const names = Object.keys(JSON.parse(list.body.toString('utf8')) as Record<string, string[]>);
    const limit = pLimit(this.readConcurrency);
    const perName = await Promise.all(names.map((name) => limit(async () => {
      const response = await this.request({ method: 'GET', path: `/v1/health/service/${encodeURIComponent(name)}`, query: { filter: `Service.Meta[${JSON.stringify(META_MIGRATION)}] == ${mine}` }, signal });
      this.refuseFilteredServices(response.headers);
      const entries = JSON.parse(response.body.toString('utf8')) as { Node: { Node: string }; Service: WireService; Checks: { CheckID: string; Status: string }[] }[];
      return entries.map((e) => instanceOf(e.Service, e.Node.Node, e.Checks.find((c) => c.CheckID === checkIdOf(e.Service.ID))?.Status));
    })));
    return perName.flat();
  }

  async agentServiceOwners(signal?: AbortSignal): Promise<Map<string, ServiceOwner>> {
    const response = await this.request({ method: 'GET', path: '/v1/agent/services', signal });
    const services = Object.values(JSON.parse(response.body.toString('utf8')) as Record<string, WireService>);
    return new Map(services.map((s) => [s.ID.toLowerCase(), { id: s.ID, ...(s.Meta?.[META_MIGRATION] ? { migration: s.Meta[META_MIGRATION] } : {}), ...(s.Meta?.[META_RULE] ? { rule: s.Meta[META_RULE] } : {}) }]));
  }

  async registerService(service: ServiceDefinition): Promise<void> {
    const body: Record<string, unknown> = { ID: service.id, Name: service.name, Address: service.address, Port: service.port, Tags: service.tags, Meta: service.meta };
    if (service.check) {
      body.Check = {
        CheckID: service.check.id, Name: service.check.name, TTL: `${service.check.ttlSeconds}s`, Status: service.check.status,
        ...(service.check.deregisterCriticalAfterSeconds ? { DeregisterCriticalServiceAfter: `${service.check.deregisterCriticalAfterSeconds}s` } : {}),
      };
    }
    // Without replace-existing-checks the agent keeps a check the new definition leaves out (a key that lost its lease).
    await this.request({ method: 'PUT', path: '/v1/agent/service/register', query: { 'replace-existing-checks': true }, body: JSON.stringify(body) });
  }

  async deregisterService(id: string): Promise<boolean> {
    const response = await this.request({ method: 'PUT', path: `/v1/agent/service/deregister/${encodeURIComponent(id)}`, accept: [404] });
    return response.status !== 404;
  }

  async updateCheck(checkId: string, status: 'passing' | 'critical', output: string): Promise<boolean> {
    const response = await this.request({ method: 'PUT', path: `/v1/agent/check/update/${encodeURIComponent(checkId)}`, body: JSON.stringify({ Status: status, Output: output }), accept: [404] });
    return response.status !== 404;
  }

  private request(req: Parameters<ConsulHttp['request']>[0]) {
    return withRetries(() => this.http.request(req), { ...this.retry, signal: req.signal ?? this.retry.signal });
  }

  /** A catalog read filtered by ACLs would show registered instances as missing. */
  private refuseFilteredServices(headers: Record<string, string | string[] | undefined>): void {
    if (headers['x-consul-results-filtered-by-acls'] === 'true') {
      throw new ConsulResponseError('consul_permission_denied', 403, 'Consul filtered instances out of a service\'s health read: the token lacks node:read (or service:read) on part of the catalog.', '', 'Grant the token what `migrate acl` prints for service rules (service and node read).');
    }
  }

  /** A recursive read silently filtered by ACLs would make parity lie (reference §F.22). */
  private refuseFiltered(headers: Record<string, string | string[] | undefined>, prefix: string): void {
    if (headers['x-consul-results-filtered-by-acls'] === 'true') {
      throw new ConsulResponseError('consul_permission_denied', 403, `Consul filtered keys under ${formatKey(prefix)} out of the answer: the token lacks read (or list) on part of the prefix.`, '', 'Grant the token read on the whole prefix (`migrate acl` prints the migrator and verifier policies).');
    }
  }
}

interface WireService {
  ID: string;
  Service: string;
  Address: string;
  Port: number;
  Tags: string[] | null;
  Meta: Record<string, string> | null;
}

function instanceOf(s: WireService, node: string, checkStatus: string | undefined): ServiceInstance {
  return { id: s.ID, name: s.Service, address: s.Address, port: s.Port, tags: s.Tags ?? [], meta: s.Meta ?? {}, node, ...(checkStatus ? { checkStatus } : {}) };
}

function parseDurationSeconds(text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(text ?? '');
  if (!match) return 0;
  const n = Number(match[1]);
  return match[2] === 'ms' ? n / 1000 : match[2] === 'm' ? n * 60 : match[2] === 'h' ? n * 3600 : n;
}
