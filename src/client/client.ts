import { EventEmitter, setMaxListeners } from 'node:events';
import { resolveConnections } from '../config/connections.js';
import { loadConfig, type LoadedConfig } from '../config/load.js';
import { isMigrateError, MigrateError, UsageError } from '../errors.js';
import type { CompiledRule, Mapping } from '../mapping/mapping.js';
import { formatKey } from '../report/keys.js';
import { currentOwner, ownersKey, type OwnersDoc } from '../cutover/phase.js';
import { statePaths } from '../state/state.js';
import { ConsulAppKv, EtcdAppKv } from '../stores/app-kv.js';
import { ConsulTarget } from '../stores/consul.js';
import { ConsulBlockingReader } from '../stores/consul-blocking.js';
import { sleep, withRetries, type ConsulConnection } from '../stores/consul-http.js';
import { EtcdSource, type EtcdConnection } from '../stores/etcd.js';
import { routeClientKey, toKeyBytes, type ClientKeyRoute, type KvKey } from './keys.js';
import { checkClientNumbers } from './options.js';
import { checkClientRules, parsePhaseDocument, type Owner, type Phase, type RulePhase } from './phase.js';
import { compareShadow, emptyShadowStats, RecentWrites, sampled, type ShadowStats, type ShadowVerdict } from './shadow.js';
import { KvWatch, type KvWatchEvent, type WatchHost, type WatchOptions } from './watch.js';

/** A value as the application writes it: bytes, or text stored as UTF-8. */
export type KvValue = string | Uint8Array;

/** Shadow reads (GitHub Scientist style): every sampled `get` also reads the other store and compares. */
export interface ShadowReadOptions {
  /** Fraction of reads shadowed, 0–1. Default 1. */
  sampleRate?: number;
  /** Wait before re-reading both stores when they differ, so writes in flight settle. Default 300 ms. */
  recheckDelayMs?: number;
  /** Keys this client wrote within this window are not counted as mismatches. Default 2000 ms. */
  writeWindowMs?: number;
  /** Randomness for sampling (tests pass their own). */
  random?: () => number;
}

/** How to create a client: {@link createKvClient}. */
export interface KvClientOptions {
  /**
   * The migration's `migration.yaml`: a path, or a configuration loaded with
   * the tool's loader (`loadConfig` / `parseConfig`). Default: `$MIGRATE_CONFIG`,
   * else `./migration.yaml`, as for the `migrate` CLI.
   */
  config?: string | LoadedConfig;
  /** The rule name(s) that hold this application's keys. */
  rules: string | readonly string[];
  /** Environment for connection settings (`ETCDCTL_*`, `CONSUL_HTTP_*`); default `process.env`. */
  env?: NodeJS.ProcessEnv;
  /** Base for a relative config path and for files the config names; default `process.cwd()`. */
  cwd?: string;
  /** Overrides of the resolved etcd connection. */
  etcd?: Partial<EtcdConnection>;
  /** Overrides of the resolved Consul connection. */
  consul?: Partial<ConsulConnection>;
  /** `true` for defaults, or the settings; off when absent. */
  shadowReads?: boolean | ShadowReadOptions;
  /** Deadline of one etcd call; default 5000 ms. */
  timeoutMs?: number;
  /** Longest wait of one Consul blocking query (phase documents and Consul watches); default 30 s. */
  blockingWaitSeconds?: number;
  /** How long a watch keeps delivering events from the previous owner after a switch (writes in flight); default 1000 ms. */
  watchDrainMs?: number;
  /** Longest a put or delete waits while a cutover or rollback has writes paused; default 30 s, then it fails with `client_writes_paused`. */
  writePauseTimeoutMs?: number;
}

/** Emitted when a rule's owner changes: operations started after it go to `to`. */
export interface SwitchEvent {
  rule: string;
  from: Owner;
  to: Owner;
  phase: Phase | undefined;
  at: Date;
}

/** A shadow read that still differed after the re-read. Never carries values. */
export interface MismatchEvent {
  rule: string;
  /** The etcd key, as text (`\xNN` for other bytes). */
  key: string;
  verdict: Exclude<ShadowVerdict, 'match'>;
  owner: Owner;
}

/** Trouble the client works through by itself (it keeps the last known owner and retries). */
export interface ClientErrorEvent {
  rule: string | undefined;
  source: 'phase' | 'watch' | 'shadow';
  error: Error;
}

/** The events of {@link KvClient}. */
/** Emitted when a cutover or rollback pauses writes to a rule, and when they resume. */
export interface PauseEvent {
  rule: string;
  paused: boolean;
  at: Date;
}

export interface KvClientEvents {
  switch: [SwitchEvent];
  pause: [PauseEvent];
  mismatch: [MismatchEvent];
  /** Not `error`, so an application without a listener is not crashed by trouble the client retries. */
  problem: [ClientErrorEvent];
}

/** One rule as `stats()` shows it. */
export interface RuleStats {
  owner: Owner;
  phase: Phase | undefined;
  updated: string | undefined;
  /** The phase document cannot be used: operations on the rule fail with this error until it is fixed. */
  error: { code: string; message: string } | undefined;
  /** When the phase document was last confirmed with Consul. */
  lastSyncAt: string | undefined;
  /** Whether following the phase document currently fails (the last known owner stays in force). */
  following: 'ok' | 'retrying' | 'not-followed';
}

/** Counters of a client (`stats()`). */
export interface KvClientStats {
  operations: { get: number; put: number; delete: number; failed: number };
  byStore: { etcd: number; consul: number };
  switches: number;
  rules: Record<string, RuleStats>;
  watches: { active: number; errors: number };
  shadow: ShadowStats;
}

interface RuleRuntime {
  rule: CompiledRule;
  phaseKey: string;
  phase: RulePhase;
  error: MigrateError | undefined;
  /** Set while the owner changes; operations wait for it. */
  switching: Promise<void> | undefined;
  /** Set while the phase document says `writesPaused`; puts and deletes wait for it. */
  paused: { done: Promise<void>; release: () => void } | undefined;
  /** Bumped on every owner change; a shadow comparison that spans one is not counted. */
  epoch: number;
  lastSyncAt: Date | undefined;
  followError: Error | undefined;
  followed: boolean;
  /** The phase document was deleted while Consul owned the rule (said once; Consul stays the owner). */
  phaseGone: boolean;
}

/** At most one `problem` from shadow reads in this long (`stats().shadow.errors` counts every failed one). */
const SHADOW_PROBLEM_EVERY_MS = 60_000;

const PHASE_MISSING_HINT = 'Start `migrate dualrun` if none runs: it writes the document back, rebuilt from the owners document. `migrate status` shows the rule\'s phase meanwhile.';

const DEFAULT_SHADOW = { sampleRate: 1, recheckDelayMs: 300, writeWindowMs: 2_000 };
const MISMATCHED_KEYS_KEPT = 100;
/** Longest an owner change waits for watches to re-subscribe before operations go on. */
const SWITCH_WAIT_MS = 2_000;

/**
 * Creates a client over the application's keys that follows the migration:
 * each call goes to the store that owns the key's rule (etcd before cutover
 * and after a rollback, Consul after cutover), switching at run time when
 * `migrate cutover` / `rollback` change the rule's phase document.
 *
 * Resolves once every phase document has been read (and etcd answered, when
 * it is used). Rejects with a typed error (`code`, `hint`) for an unknown
 * rule, an invalid or newer phase document, or an unreachable server.
 *
 * @example
 * const kv = await createKvClient({ config: 'migration.yaml', rules: ['app-config'] });
 * kv.on('switch', (e) => console.log(`rule ${e.rule} now on ${e.to}`));
 * await kv.put('/app/config/feature-x', 'on');
 * const value = await kv.getString('/app/config/feature-x');
 */
export async function createKvClient(options: KvClientOptions): Promise<KvClient> {
  const shadow = typeof options.shadowReads === 'object' ? options.shadowReads : {};
  checkClientNumbers({
    'shadowReads.sampleRate': { value: shadow.sampleRate, min: 0, max: 1 },
    'shadowReads.recheckDelayMs': { value: shadow.recheckDelayMs, min: 0, max: 60_000 },
    'shadowReads.writeWindowMs': { value: shadow.writeWindowMs, min: 0, max: 3_600_000 },
    timeoutMs: { value: options.timeoutMs, min: 1, max: 600_000 },
    // Consul caps a blocking query's wait at 10 minutes.
    blockingWaitSeconds: { value: options.blockingWaitSeconds, min: 1, max: 600 },
    watchDrainMs: { value: options.watchDrainMs, min: 0, max: 600_000 },
    writePauseTimeoutMs: { value: options.writePauseTimeoutMs, min: 1, max: 3_600_000 },
  });
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();
  const loaded = typeof options.config === 'object' ? options.config : loadConfig({ configFlag: options.config, env, cwd, required: true });
  const requested = typeof options.rules === 'string' ? [options.rules] : [...(options.rules ?? [])];
  const rules = checkClientRules(requested, loaded.mapping.rules, loaded.file);
  const connections = resolveConnections(loaded.config, {}, env, cwd, loaded.file);
  const source = new EtcdSource({ ...connections.source, timeoutMs: options.timeoutMs ?? 5_000, ...options.etcd });
  const target = new ConsulTarget({ ...connections.target, ...options.consul }, { limits: loaded.config.target.limits, retry: { attempts: 3 } });
  const client = new KvClient(loaded, rules, source, target, options);
  try {
    await client.start();
  } catch (err) {
    await client.close();
    throw err;
  }
  return client;
}

/**
 * The application's key-value client during a migration. Keys are etcd keys,
 * as the application has always named them; when Consul owns a rule, the
 * client maps them with the rule's mapping (the same `route` as `migrate copy`).
 * Values are bytes (`Buffer`) and never logged. Create it with {@link createKvClient}.
 */
export class KvClient extends EventEmitter<KvClientEvents> implements WatchHost {
  readonly mapping: Mapping;
  private readonly clientRules: ReadonlySet<string>;
  private readonly runtimes = new Map<string, RuleRuntime>();
  private readonly etcd: EtcdAppKv;
  private readonly consul: ConsulAppKv;
  private readonly closing = new AbortController();
  private readonly shadow: Required<Omit<ShadowReadOptions, 'random'>> & { random: () => number } | undefined;
  private readonly recent: RecentWrites;
  private readonly pendingShadows = new Set<Promise<void>>();
  private readonly watches = new Set<KvWatch>();
  private readonly followers: Promise<void>[] = [];
  private readonly counters = { get: 0, put: 0, delete: 0, failed: 0, etcd: 0, consul: 0, switches: 0, watchErrors: 0 };
  private readonly shadowStats: ShadowStats;
  /** Phase documents and Consul watches: the tool's one blocking-query reader. */
  private readonly blocking: ConsulBlockingReader;
  readonly watchDrainMs: number;
  private readonly pauseTimeoutMs: number;
  private closed = false;
  private shadowProblemAt = -Infinity;
  private readonly ownersKey: string;
  /** Events found while `start` runs, emitted once it has returned. */
  private early: (() => void)[] | undefined = [];

  /** @internal Use {@link createKvClient}. */
  constructor(loaded: LoadedConfig, rules: readonly string[], private readonly source: EtcdSource, private readonly target: ConsulTarget, options: KvClientOptions) {
    super();
    // Every pending shadow re-check and watch listens on this signal; that many listeners is expected.
    setMaxListeners(0, this.closing.signal);
    this.mapping = loaded.mapping;
    this.clientRules = new Set(rules);
    this.watchDrainMs = options.watchDrainMs ?? 1_000;
    this.pauseTimeoutMs = options.writePauseTimeoutMs ?? 30_000;
    this.etcd = new EtcdAppKv(source);
    this.blocking = new ConsulBlockingReader(target.http, options.blockingWaitSeconds ?? 30);
    this.consul = new ConsulAppKv(target, this.blocking);
    const shadow = options.shadowReads === true ? {} : options.shadowReads || undefined;
    this.shadow = shadow ? { ...DEFAULT_SHADOW, ...definedOnly(shadow), random: shadow.random ?? Math.random } : undefined;
    this.recent = new RecentWrites(this.shadow?.writeWindowMs ?? DEFAULT_SHADOW.writeWindowMs);
    this.shadowStats = emptyShadowStats(this.shadow !== undefined);
    const paths = statePaths(loaded.config.state.prefix, loaded.config.id);
    this.ownersKey = ownersKey(paths);
    for (const name of rules) {
      const rule = this.mapping.rules.find((r) => r.name === name)!;
      this.runtimes.set(name, {
        rule,
        phaseKey: paths.rule(name),
        phase: { rule: name, owner: 'etcd', phase: undefined, updated: undefined, modifyIndex: 0, writesPaused: false },
        error: undefined,
        switching: undefined,
        paused: undefined,
        epoch: 0,
        lastSyncAt: undefined,
        followError: undefined,
        followed: rule.action === 'copy',
        phaseGone: false,
      });
    }
  }

  /** @internal Reads every phase document, checks etcd when it is used, then starts following the documents. */
  async start(): Promise<void> {
    const followed = [...this.runtimes.values()].filter((rt) => rt.followed);
    let owners: Promise<OwnersDoc | undefined> | undefined;
    const first = await Promise.all(
      followed.map(async (rt) => {
        const answer = await withRetries(() => this.readPhase(rt, undefined), { attempts: 3, signal: this.closing.signal });
        rt.phase = parsePhaseDocument(rt.phaseKey, rt.rule.name, answer.value, answer.modifyIndex);
        // No document: the rule has not moved, unless one was deleted by hand while Consul owns the rule, which the
        // owners document beside it says (a token without read on it takes the rule to be etcd's, as before).
        if (answer.value === undefined) {
          owners ??= this.readOwners();
          const phase = (await owners)?.rules[rt.rule.name]?.phase;
          if (phase && currentOwner(await owners, rt.rule.name) === 'consul') {
            rt.phase = { ...rt.phase, owner: 'consul', phase };
            rt.phaseGone = true;
            const error = new MigrateError('client_phase_missing', 4, `The phase document ${rt.phaseKey} of rule "${rt.rule.name}" is missing while the owners document says Consul owns the rule (${phase}); the client goes on with Consul.`, { hint: PHASE_MISSING_HINT, details: { rule: rt.rule.name } });
            this.announce(() => this.emit('problem', { rule: rt.rule.name, source: 'phase', error }));
          }
        }
        this.updatePause(rt);
        rt.lastSyncAt = new Date();
        return { rt, index: answer.index };
      }),
    );
    if (this.shadow || [...this.runtimes.values()].some((rt) => rt.phase.owner === 'etcd')) {
      await this.etcd.revision([...this.runtimes.values()][0]!.rule.fromBytes);
    }
    for (const { rt, index } of first) this.followers.push(this.follow(rt, index));
    // What start found is told once the application has the client and its listeners (they are added after it returns).
    const early = this.early ?? [];
    this.early = undefined;
    if (early.length > 0) setImmediate(() => early.forEach((fire) => fire()));
  }

  /** The owners document, or `undefined` when there is none or the token may not read it. */
  private async readOwners(): Promise<OwnersDoc | undefined> {
    try {
      const answer = await this.blocking.readKey(this.ownersKey, 0, this.closing.signal);
      return answer.entry ? (JSON.parse(answer.entry.value.toString('utf8')) as OwnersDoc) : undefined;
    } catch (err) {
      if (err instanceof SyntaxError) return undefined;
      if (!(isMigrateError(err) && err.code === 'consul_permission_denied')) throw err;
      // Said: should the rule's document have been deleted while Consul owns it, the client would write to etcd.
      const error = new MigrateError('client_owners_unreadable', 4, `The Consul token may not read the owners document ${this.ownersKey}: a rule whose phase document is missing is taken to be etcd's, which is wrong only if the document was deleted by hand while Consul owns the rule.`, {
        hint: 'Give the application\'s token the policy `migrate acl` prints for its rules (read on the owners document).',
      });
      this.announce(() => this.emit('problem', { rule: undefined, source: 'phase', error }));
      return undefined;
    }
  }

  /** Emits now, or once `start` has returned (an event while it runs has no listener yet). */
  private announce(fire: () => void): void {
    if (this.early) this.early.push(fire);
    else fire();
  }

  /** The value of `key` in the store that owns it, or `undefined` when the key does not exist. */
  async get(key: KvKey): Promise<Buffer | undefined> {
    return this.run('get', key, async (route, rt, owner) => {
      const value = await this.read(owner, route);
      // A finalized rule is no longer mirrored: etcd's copy is stale by design, nothing to compare.
      if (this.shadow && rt.followed && rt.phase.phase !== 'finalized' && sampled(this.shadow.sampleRate, this.shadow.random)) this.startShadow(route, rt, owner, value);
      return value;
    });
  }

  /** {@link get} decoded as UTF-8. */
  async getString(key: KvKey): Promise<string | undefined> {
    return (await this.get(key))?.toString('utf8');
  }

  /** Writes `value` at `key` in the store that owns it. */
  async put(key: KvKey, value: KvValue): Promise<void> {
    const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : Buffer.isBuffer(value) ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    await this.run('put', key, async (route, _rt, owner) => {
      this.recent.note(route.etcdKey);
      try {
        if (owner === 'etcd') await this.etcd.put(route.etcdKey, bytes);
        else await this.consul.put(this.consulKey(route), bytes);
      } finally {
        this.recent.note(route.etcdKey);
      }
    });
  }

  /** Deletes `key` in the store that owns it (no error when it does not exist). */
  async delete(key: KvKey): Promise<void> {
    await this.run('delete', key, async (route, _rt, owner) => {
      this.recent.note(route.etcdKey);
      try {
        if (owner === 'etcd') await this.etcd.delete(route.etcdKey);
        else await this.consul.delete(this.consulKey(route));
      } finally {
        this.recent.note(route.etcdKey);
      }
    });
  }

  /**
   * Changes under an etcd `prefix`, from the store that owns each rule,
   * re-subscribed on the new owner when a rule switches (a `switch` event
   * marks the place in the stream). Iterate it with `for await`; `ready`
   * resolves once every change from now on will be delivered.
   */
  watch(prefix: KvKey, options: WatchOptions = {}): KvWatch {
    this.assertOpen();
    const watch = new KvWatch(this, toKeyBytes(prefix), options);
    this.watches.add(watch);
    void watch.closed.then(() => this.watches.delete(watch));
    return watch;
  }

  /** The store that currently owns `rule` (default: the client's only rule). */
  owner(rule?: string): Owner {
    return this.runtime(rule).phase.owner;
  }

  /** What the client knows of each rule's phase. */
  phases(): RulePhase[] {
    return [...this.runtimes.values()].map((rt) => ({ ...rt.phase }));
  }

  /** Counters since the client was created. Keys only, never values. */
  stats(): KvClientStats {
    const rules: Record<string, RuleStats> = {};
    for (const [name, rt] of this.runtimes) {
      rules[name] = {
        owner: rt.phase.owner,
        phase: rt.phase.phase,
        updated: rt.phase.updated,
        error: rt.error ? { code: rt.error.code, message: rt.error.message } : undefined,
        lastSyncAt: rt.lastSyncAt?.toISOString(),
        following: !rt.followed ? 'not-followed' : rt.followError ? 'retrying' : 'ok',
      };
    }
    const c = this.counters;
    return {
      operations: { get: c.get, put: c.put, delete: c.delete, failed: c.failed },
      byStore: { etcd: c.etcd, consul: c.consul },
      switches: c.switches,
      rules,
      watches: { active: this.watches.size, errors: c.watchErrors },
      shadow: { ...this.shadowStats, skipped: { ...this.shadowStats.skipped }, pending: this.pendingShadows.size, mismatchedKeys: [...this.shadowStats.mismatchedKeys] },
    };
  }

  /** Resolves when every shadow comparison started so far has finished. */
  async shadowSettled(): Promise<void> {
    while (this.pendingShadows.size > 0) await Promise.allSettled([...this.pendingShadows]);
  }

  /** Stops following the phase documents, ends every watch, and closes the connections. Pending shadow reads are dropped. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.closing.abort();
    await Promise.allSettled([...this.watches].map((w) => w.close()));
    await Promise.allSettled(this.followers);
    await Promise.allSettled([...this.pendingShadows]);
    this.source.close();
    this.target.close();
  }

  // ---- WatchHost: what a KvWatch needs from the client ----

  /** @internal */
  get closeSignal(): AbortSignal {
    return this.closing.signal;
  }

  /** @internal */
  watchRules(): readonly string[] {
    return [...this.clientRules];
  }

  /** @internal The owner a new subscription of `rule` starts on (after a switch in progress). */
  async settledOwner(rule: string): Promise<Owner> {
    const rt = this.runtime(rule);
    while (rt.switching) await rt.switching;
    return rt.phase.owner;
  }

  /** @internal */
  stores(): { etcd: EtcdAppKv; consul: ConsulAppKv } {
    return { etcd: this.etcd, consul: this.consul };
  }

  /** @internal */
  reportWatchError(rule: string, error: Error): void {
    this.counters.watchErrors++;
    this.emit('problem', { rule, source: 'watch', error });
  }

  // ---- internals ----

  private runtime(rule: string | undefined): RuleRuntime {
    if (rule === undefined) {
      if (this.runtimes.size !== 1) throw new UsageError('client_rule_ambiguous', `This client follows ${this.runtimes.size} rules; name one (${[...this.runtimes.keys()].join(', ')}).`);
      return this.runtimes.values().next().value!;
    }
    const rt = this.runtimes.get(rule);
    if (!rt) throw new UsageError('client_rule_unknown', `This client does not follow rule "${rule}"; it follows ${[...this.runtimes.keys()].map((r) => `"${r}"`).join(', ')}.`);
    return rt;
  }

  private assertOpen(): void {
    if (this.closed) throw new UsageError('client_closed', 'The key-value client is closed.', { hint: 'Create a new client with createKvClient.' });
  }

  /** Routes the key, waits out an owner change in progress, and runs `fn` on the owner; counts the outcome. */
  private async run<T>(op: 'get' | 'put' | 'delete', key: KvKey, fn: (route: ClientKeyRoute, rt: RuleRuntime, owner: Owner) => Promise<T>): Promise<T> {
    this.assertOpen();
    this.counters[op]++;
    try {
      const route = routeClientKey(this.mapping, this.clientRules, toKeyBytes(key));
      const rt = this.runtimes.get(route.rule.name)!;
      for (;;) {
        while (rt.switching) await rt.switching;
        if (op === 'get' || !rt.paused) break;
        await this.writesResumed(rt, op);
      }
      if (rt.error) throw rt.error;
      const owner = rt.phase.owner;
      const result = await fn(route, rt, owner);
      this.counters[owner]++;
      return result;
    } catch (err) {
      this.counters.failed++;
      throw err;
    }
  }

  private consulKey(route: ClientKeyRoute): string {
    if (route.consulKey !== undefined) return route.consulKey;
    throw new UsageError('client_key_not_in_consul', `Consul owns rule "${route.rule.name}", but the key ${formatKey(route.etcdKey)} has no Consul key: ${route.whyNotInConsul}.`, {
      hint: 'Such keys were reported by `migrate audit` and not copied; rename the key, or use keys: escape for the rule.',
      details: { rule: route.rule.name, key: formatKey(route.etcdKey) },
    });
  }

  private read(store: Owner, route: ClientKeyRoute): Promise<Buffer | undefined> {
    return store === 'etcd' ? this.etcd.get(route.etcdKey) : this.consul.get(this.consulKey(route));
  }

  // ---- shadow reads ----

  private startShadow(route: ClientKeyRoute, rt: RuleRuntime, owner: Owner, value: Buffer | undefined): void {
    const work = this.compareInShadow(route, rt, owner, value, rt.epoch).catch((err: unknown) => {
      this.shadowStats.errors++;
      // One a minute at most (the count has them all): with the other store down, every sampled read failed, 43 in 20 s.
      if (Date.now() - this.shadowProblemAt < SHADOW_PROBLEM_EVERY_MS) return;
      this.shadowProblemAt = Date.now();
      this.emit('problem', { rule: rt.rule.name, source: 'shadow', error: err as Error });
    });
    this.pendingShadows.add(work);
    void work.finally(() => this.pendingShadows.delete(work));
  }

  private async compareInShadow(route: ClientKeyRoute, rt: RuleRuntime, owner: Owner, ownerValue: Buffer | undefined, epoch: number): Promise<void> {
    const stats = this.shadowStats;
    const shadow = this.shadow!;
    const other: Owner = owner === 'etcd' ? 'consul' : 'etcd';
    if (route.consulKey === undefined) {
      stats.skipped['not-in-consul']++;
      return;
    }
    const otherValue = await this.read(other, route);
    if (compareShadow(owner, ownerValue, otherValue) === 'match') {
      stats.compared++;
      stats.matched++;
      return;
    }
    // Different: maybe a write in flight (the dual-run's lag, or this client's own write). Look again later.
    await sleep(shadow.recheckDelayMs, this.closing.signal);
    if (this.closing.signal.aborted) {
      stats.skipped.closed++;
      return;
    }
    const [again, againOther] = await Promise.all([this.read(owner, route), this.read(other, route)]);
    const verdict = compareShadow(owner, again, againOther);
    if (rt.epoch !== epoch || rt.switching) {
      stats.skipped.switched++;
      return;
    }
    stats.compared++;
    if (verdict === 'match') {
      stats.settled++;
      return;
    }
    if (this.recent.recent(route.etcdKey)) {
      stats.compared--;
      stats.skipped['recent-write']++;
      return;
    }
    stats.mismatches++;
    const key = formatKey(route.etcdKey);
    stats.mismatchedKeys.push(key);
    if (stats.mismatchedKeys.length > MISMATCHED_KEYS_KEPT) stats.mismatchedKeys.shift();
    this.emit('mismatch', { rule: rt.rule.name, key, verdict, owner });
  }

  // ---- following the phase documents ----

  private async readPhase(rt: RuleRuntime, index: number | undefined): Promise<{ value: Buffer | undefined; modifyIndex: number; index: number }> {
    const answer = await this.blocking.readKey(rt.phaseKey, index ?? 0, this.closing.signal);
    return { value: answer.entry?.value, modifyIndex: answer.entry?.modifyIndex ?? 0, index: answer.index };
  }


  /** A blocking query on the rule's phase document, for as long as the client is open. */
  private async follow(rt: RuleRuntime, startIndex: number): Promise<void> {
    let index = startIndex;
    let delay = 100;
    while (!this.closing.signal.aborted) {
      let answer;
      try {
        answer = await this.readPhase(rt, index);
      } catch (err) {
        if (this.closing.signal.aborted) return;
        if (!rt.followError) this.emit('problem', { rule: rt.rule.name, source: 'phase', error: err as Error });
        rt.followError = err as Error;
        await sleep(delay, this.closing.signal);
        delay = Math.min(5_000, delay * 2);
        // Asked again at once, not blocking: a Consul that is back answers now, so `following` says `ok`
        // again within the retry (a blocking query on the old index kept it `retrying` until its wait ran out).
        index = 0;
        continue;
      }
      delay = 100;
      rt.followError = undefined;
      rt.lastSyncAt = new Date();
      // Consul's rule: start over when the index goes backwards (a snapshot restore, a new leader's state).
      index = answer.index < index ? 0 : answer.index;
      if (answer.modifyIndex === rt.phase.modifyIndex && !rt.error) continue;
      // Gone while Consul owns the rule: deleted by hand (no command deletes a document of a rule Consul owns). Taken as
      // missing, the rule would be etcd's again, and writes would go where its data no longer is: Consul stays the owner,
      // said once; a running dual-run writes the document back, rebuilt from the owners document.
      if (answer.value === undefined && rt.phase.owner === 'consul') {
        if (!rt.phaseGone) {
          rt.phaseGone = true;
          this.emit('problem', { rule: rt.rule.name, source: 'phase', error: new MigrateError('client_phase_missing', 4, `The phase document ${rt.phaseKey} of rule "${rt.rule.name}" was deleted while Consul owns the rule; the client goes on with Consul.`, { hint: PHASE_MISSING_HINT, details: { rule: rt.rule.name } }) });
        }
        continue;
      }
      rt.phaseGone = false;
      let next: RulePhase;
      try {
        next = parsePhaseDocument(rt.phaseKey, rt.rule.name, answer.value, answer.modifyIndex);
      } catch (err) {
        // Fail closed: writing to a store that may not own the rule would lose data.
        if (!rt.error || rt.error.message !== (err as Error).message) {
          rt.error = isMigrateError(err) ? err : new MigrateError('client_phase_invalid', 4, String(err));
          this.emit('problem', { rule: rt.rule.name, source: 'phase', error: rt.error });
        }
        continue;
      }
      rt.error = undefined;
      await this.applyPhase(rt, next);
    }
  }

  /** Waits while writes to the rule are paused (a cutover or rollback is moving it), at most the write pause timeout. */
  private async writesResumed(rt: RuleRuntime, op: 'put' | 'delete'): Promise<void> {
    const paused = rt.paused!;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      const move = rt.phase.pausedFor;
      const undo = move === 'rollback' ? 'cutover' : 'rollback';
      timer = setTimeout(() => reject(new MigrateError('client_writes_paused', 4, `A ${op} on rule "${rt.rule.name}" waited ${this.pauseTimeoutMs} ms: writes are paused while \`migrate ${move ?? 'cutover` or `rollback'}\` moves the rule, and the pause did not end.`, {
        hint: `Run \`migrate status\`: a move that stopped half-way leaves the pause in the phase document; running \`migrate ${move ?? 'cutover'} --rule ${rt.rule.name}\` again finishes the move, and \`migrate ${undo} --rule ${rt.rule.name}\` abandons it.`,
        details: { rule: rt.rule.name },
      })), this.pauseTimeoutMs);
    });
    try {
      await Promise.race([paused.done, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Opens or releases the write gate of a rule after its phase changed. */
  private updatePause(rt: RuleRuntime): void {
    if (rt.phase.writesPaused && !rt.paused) {
      let release!: () => void;
      const done = new Promise<void>((resolve) => (release = resolve));
      rt.paused = { done, release };
      const at = new Date();
      this.announce(() => this.emit('pause', { rule: rt.rule.name, paused: true, at }));
    } else if (!rt.phase.writesPaused && rt.paused) {
      const { release } = rt.paused;
      rt.paused = undefined;
      release();
      const at = new Date();
      this.announce(() => this.emit('pause', { rule: rt.rule.name, paused: false, at }));
    }
  }

  private async applyPhase(rt: RuleRuntime, next: RulePhase): Promise<void> {
    const from = rt.phase.owner;
    if (next.owner === from) {
      rt.phase = next;
      this.updatePause(rt);
      return;
    }
    let release!: () => void;
    rt.switching = new Promise((resolve) => (release = resolve));
    try {
      // Watches first get their starting point on the new owner, so no write made after the switch escapes them.
      // Behind a write fence (writes were paused before the flip, as `cutover` and `rollback` do), the old
      // owner's stream ends at the flip: past it come only the other direction's copies of the new owner's
      // writes (the reverse mirror into etcd after a cutover, the dual-run into Consul after a rollback),
      // which arrived as duplicates, some after newer events of the new owner. Without the fence (a phase
      // document written by hand), writes in flight may land on the old owner after the flip: delivered.
      const cutoff = !rt.phase.writesPaused ? undefined : next.owner === 'consul' ? next.flipRevision : next.modifyIndex || undefined;
      const resubscribed = Promise.allSettled([...this.watches].map((watch) => watch.switchRule(rt.rule.name, next.owner, cutoff)));
      await Promise.race([resubscribed, sleep(SWITCH_WAIT_MS, this.closing.signal)]);
    } finally {
      rt.phase = next;
      rt.epoch++;
      this.counters.switches++;
      rt.switching = undefined;
      release();
      this.updatePause(rt);
    }
    this.emit('switch', { rule: rt.rule.name, from, to: next.owner, phase: next.phase, at: new Date() });
  }
}

function definedOnly<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}

export type { KvWatchEvent, WatchOptions };
