import pLimit from 'p-limit';
import type { ServiceSpec } from '../config/load.js';
import { isMigrateError } from '../errors.js';
import type { CompiledRule, Mapping } from '../mapping/mapping.js';
import { findRule } from '../mapping/route.js';
import { formatKey } from '../report/keys.js';
import { SourceCompactedError } from '../stores/etcd.js';
import type { ServiceDefinition, SourceEvent, SourceReader, TargetStore, WatchMessage } from '../stores/types.js';
import { checkIdOf, META_LEASE, META_RULE, instanceIdOf, registrationOf, takenBy, type ServiceOwner } from './registration.js';
import { definitionOf, syncServiceRule } from './sync.js';

type Log = (level: 'info' | 'warn' | 'error', message: string, fields?: Record<string, unknown>) => void;

/** One instance the dual-run keeps: its definition (to register it again) and its check's counters. */
interface Tracked {
  rule: CompiledRule;
  definition: ServiceDefinition;
  lease: string | undefined;
  /** The etcd key it came from (unknown for instances found on the agent at start). */
  key: string | undefined;
  /** What the tool last told Consul about the check. */
  status: 'passing' | 'critical';
  failures: number;
  successes: number;
}

export interface ServiceMirrorStats {
  registered: number;
  deregistered: number;
  /** Instances kept (a check per leased one). */
  instances: number;
  critical: number;
  /** Keys whose value or name made no instance. */
  problems: number;
}

/** Check updates in flight at once. */
const CHECK_CONCURRENCY = 8;

/**
 * The dual-run's side of `service` rules: each etcd put under a service rule
 * registers (or re-registers) its instance on the agent, each delete (a lease
 * that ended, a deregistered instance) removes it, and the TTL checks of
 * leased instances are passed while their etcd lease lives.
 *
 * The check counters follow the rule's `check` settings: a lease read that
 * fails (etcd unreachable) is tolerated `failuresBeforeCritical - 1` times,
 * during which the check keeps passing; then the instance is marked
 * critical, and it passes again after `successBeforePassing` good reads.
 * Consul does not apply these counters to TTL checks, hence here. If the
 * tool stops, nobody passes the checks and Consul turns them critical
 * within the TTL.
 *
 * Registrations are idempotent, so replaying events from the checkpoint
 * after a restart re-applies them safely; they are applied before the txn
 * that moves the checkpoint past their revision.
 */
/**
 * Who holds the agent's instances, by id in lower case ({@link TargetStore.agentServiceOwners}), read
 * at most once per revision (a deploy registers hundreds of instances in one); what this mirror
 * deregisters meanwhile is taken out of it.
 */
class Owners {
  private read: Promise<Map<string, ServiceOwner>> | undefined;
  constructor(private readonly target: Pick<TargetStore, 'agentServiceOwners'>) {}

  async of(id: string): Promise<ServiceOwner | undefined> {
    this.read ??= this.target.agentServiceOwners();
    return (await this.read).get(id.toLowerCase());
  }

  async forget(id: string): Promise<void> {
    (await this.read)?.delete(id.toLowerCase());
  }
}

export class ServiceMirror {
  private readonly tracked = new Map<string, Tracked>();
  readonly stats: ServiceMirrorStats = { registered: 0, deregistered: 0, instances: 0, critical: 0, problems: 0 };
  private readonly warned = new Set<string>();
  /** By instance id in lower case: the last key refused for making an id another key's instance holds; registered once that instance goes. */
  private readonly shadowed = new Map<string, { rule: CompiledRule; key: Buffer }>();
  /** The tail of {@link serially}'s queue. */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly deps: { source: SourceReader; target: TargetStore; mapping: Mapping; migrationId: string; log: Log }) {}

  get active(): boolean {
    return this.deps.mapping.serviceRules.length > 0;
  }

  /** How often the checks are passed: a third of the shortest TTL (at least 1 s), so two missed beats are tolerated. */
  get checkEveryMs(): number {
    const ttls = this.deps.mapping.serviceRules.map((r) => r.service!.check.ttlSeconds);
    return Math.max(1000, Math.floor((Math.min(...ttls) * 1000) / 3));
  }

  /**
   * At the start of a lead: brings this agent's instances in line with etcd at
   * the checkpoint (another replica may have registered them on its own
   * agent), then tracks every leased one. Events after the checkpoint are
   * replayed by the watch. A compacted checkpoint is left to the re-baseline.
   */
  async start(checkpoint: number, signal: AbortSignal): Promise<void> {
    if (!this.active) return;
    const { source, target, mapping, migrationId, log } = this.deps;
    try {
      const existing = await target.listServiceInstances(migrationId, 'agent', signal);
      for (const rule of mapping.serviceRules) {
        const stats = await syncServiceRule(rule, { source, target, mapping, migrationId }, checkpoint, existing, {
          deleteExtraneous: true, allowMassDelete: false, signal,
        }).catch((err: unknown) => {
          if (isMigrateError(err) && err.code === 'delete_guard') {
            log('error', `${err.message} Left as they are; deregister them by hand, or run \`migrate copy --delete-extraneous --allow-mass-delete\`.`, { rule: rule.name });
            return undefined;
          }
          throw err;
        });
        if (stats) log('info', `service rule ${rule.name}: ${stats.registered} instance(s) registered, ${stats.updated} updated, ${stats.unchanged} unchanged, ${stats.deregistered} deregistered at revision ${checkpoint}`, { rule: rule.name });
      }
    } catch (err) {
      if (!(err instanceof SourceCompactedError)) throw err;
      log('warn', `revision ${checkpoint} is compacted: the service rules are brought in line by the re-baseline`);
    }
    await this.load(signal);
  }

  /** Tracks the instances this migration has on the agent (after a start or a re-baseline). */
  async load(signal?: AbortSignal): Promise<void> {
    this.tracked.clear();
    const rules = new Map(this.deps.mapping.serviceRules.map((r) => [r.name, r]));
    for (const instance of await this.deps.target.listServiceInstances(this.deps.migrationId, 'agent', signal)) {
      const rule = rules.get(instance.meta[META_RULE] ?? '');
      if (!rule) continue;
      const lease = instance.meta[META_LEASE];
      const { id, name, address, port, tags, meta } = instance;
      const definition: ServiceDefinition = { id, name, address, port, tags, meta };
      if (lease) definition.check = { id: checkIdOf(id), name: `etcd lease ${lease}`, ttlSeconds: rule.service!.check.ttlSeconds, status: 'passing', ...deregisterAfter(rule.service!) };
      this.tracked.set(id, { rule, definition, lease, key: undefined, status: instance.checkStatus === 'critical' ? 'critical' : 'passing', failures: 0, successes: 0 });
    }
    this.count();
  }

  /**
   * Applies the events of one revision that belong to service rules and
   * returns the others (for the KV replication).
   */
  async apply(message: Extract<WatchMessage, { kind: 'revision' }>): Promise<Extract<WatchMessage, { kind: 'revision' }>> {
    if (!this.active) return message;
    return this.serially(() => this.applyNow(message));
  }

  private async applyNow(message: Extract<WatchMessage, { kind: 'revision' }>): Promise<Extract<WatchMessage, { kind: 'revision' }>> {
    const rest: SourceEvent[] = [];
    const owners = new Owners(this.deps.target);
    for (const event of message.events) {
      const rule = findRule(this.deps.mapping, event.entry.key);
      if (rule?.action !== 'service') {
        rest.push(event);
        continue;
      }
      if (event.type === 'delete') await this.remove(rule, event.entry.key, 'its etcd key was deleted', owners);
      else await this.put(rule, event, owners);
    }
    this.count();
    return rest.length === message.events.length ? message : { ...message, events: rest };
  }

  private async put(rule: CompiledRule, event: SourceEvent, owners: Owners): Promise<void> {
    const parsed = registrationOf(rule, event.entry, this.deps.migrationId);
    if (!parsed.ok) {
      this.stats.problems++;
      if (!this.warned.has(parsed.key)) {
        this.warned.add(parsed.key);
        this.deps.log('warn', `service rule ${rule.name}: ${parsed.key} makes no instance (${parsed.problem}: ${parsed.detail}); any instance it had is deregistered`, { rule: rule.name, key: parsed.key });
      }
      // A stale address must not stay advertised.
      await this.remove(rule, event.entry.key, 'its value no longer describes an instance', owners);
      return;
    }
    const registration = parsed.registration;
    const earlier = this.tracked.get(registration.id);
    // Another rule's instance of this id, or one of an id that differs only in case (Consul's catalog takes them as one): theirs stays.
    const lower = registration.id.toLowerCase();
    const other = earlier ? (earlier.rule.name !== rule.name ? earlier : undefined) : [...this.tracked.values()].find((t) => t.definition.id.toLowerCase() === lower);
    if (other) {
      this.shadowed.set(lower, { rule, key: event.entry.key });
      this.stats.problems++;
      if (!this.warned.has(registration.key)) {
        this.warned.add(registration.key);
        this.deps.log('warn', `service rule ${rule.name}: ${registration.key} makes instance id "${registration.id}", but ${takenBy({ id: other.definition.id, migration: this.deps.migrationId, rule: other.rule.name }, this.deps.migrationId, rule.name) ?? `it differs only in case from "${other.definition.id}", which Consul's catalog takes as the same`}; not registered`, { rule: rule.name, key: registration.key });
      }
      return;
    }
    if (earlier?.key !== undefined && earlier.key !== registration.key) {
      this.shadowed.set(lower, { rule, key: event.entry.key });
      this.stats.problems++;
      this.deps.log('warn', `service rule ${rule.name}: ${registration.key} makes instance id "${registration.id}", which ${earlier.key} already has; not registered (make the id template include more of the key)`, { rule: rule.name, key: registration.key });
      return;
    }
    if (!earlier) {
      // A new instance of the rule: never over one the agent has from someone else (another rule or migration, or by hand).
      const taken = takenBy(await owners.of(lower), this.deps.migrationId, rule.name);
      if (taken) {
        this.stats.problems++;
        if (!this.warned.has(registration.key)) {
          this.warned.add(registration.key);
          this.deps.log('warn', `service rule ${rule.name}: ${registration.key} makes instance id "${registration.id}", but ${taken}; not registered`, { rule: rule.name, key: registration.key });
        }
        return;
      }
    }
    const definition = definitionOf(registration, rule.service!, earlier?.status ?? 'passing');
    // Registrator-style agents rewrite their keys on every refresh: unchanged instances are not sent again.
    if (earlier && fingerprint(earlier.definition) === fingerprint(definition)) return;
    await this.deps.target.registerService(definition);
    this.stats.registered++;
    this.tracked.set(registration.id, { rule, definition, lease: registration.lease, key: registration.key, status: earlier?.status ?? 'passing', failures: 0, successes: 0 });
  }

  private async remove(rule: CompiledRule, key: Buffer, why: string, owners: Owners): Promise<void> {
    const id = instanceIdOf(rule, key);
    if (id === undefined) return;
    // Another key makes this instance (a key whose id it duplicates, not registered): its change leaves the instance alone.
    const owner = this.tracked.get(id)?.key;
    if (owner !== undefined && owner !== formatKey(key)) return;
    const known = this.tracked.delete(id);
    // Not tracked: deregistered only when the agent's instance is the rule's own (a replay after a restart);
    // one someone else registered under that id (by hand, another rule or migration, or in another case) is left alone.
    if (!known) {
      const owner = await owners.of(id);
      if (takenBy(owner, this.deps.migrationId, rule.name) || (owner && owner.id !== id)) return;
    }
    // Deregistering an unknown id is a no-op (404), so replays are harmless.
    if ((await this.deps.target.deregisterService(id)) || known) {
      await owners.forget(id);
      this.stats.deregistered++;
      this.deps.log('info', `service rule ${rule.name}: deregistered ${id}: ${why}`, { rule: rule.name, key: formatKey(key) });
    }
    if (known) await this.registerShadowed(id, owners);
  }

  /** A key refused for the id of the instance just deregistered makes it now, if it still exists. */
  private async registerShadowed(id: string, owners: Owners): Promise<void> {
    const shadow = this.shadowed.get(id.toLowerCase());
    if (!shadow) return;
    this.shadowed.delete(id.toLowerCase());
    for await (const page of this.deps.source.readPages({ start: shadow.key, end: Buffer.concat([shadow.key, Buffer.from([0])]) })) {
      const entry = page.entries[0];
      if (!entry) continue;
      this.deps.log('info', `service rule ${shadow.rule.name}: ${formatKey(shadow.key)}, refused while instance ${id} held its id, makes it now`, { rule: shadow.rule.name, key: formatKey(shadow.key) });
      await this.put(shadow.rule, { type: 'put', entry }, owners);
    }
  }

  /** One beat of the TTL checks: reads each lease once and passes, tolerates or fails the checks of its instances. */
  async keepChecks(): Promise<void> {
    const byLease = new Map<string, Tracked[]>();
    for (const t of this.tracked.values()) if (t.lease) byLease.set(t.lease, [...(byLease.get(t.lease) ?? []), t]);
    const limit = pLimit(CHECK_CONCURRENCY);
    await Promise.all([...byLease].map(([lease, instances]) => limit(async () => {
      let alive: boolean | undefined;
      try {
        alive = (await this.deps.source.readLease(lease)).ttl > 0;
      } catch {
        alive = undefined;
      }
      // An ended lease: etcd deletes its keys in one revision, and the watch deregisters them.
      if (alive === false) return;
      for (const t of instances) await this.beat(t, alive === true);
    })));
    await this.restoreUnleased();
    this.count();
  }

  /**
   * Instances without a lease have no check whose update would find them gone:
   * one the agent lost (deregistered by hand, or an agent restarted without its
   * data) is found missing from the agent's list and registered again.
   */
  private async restoreUnleased(): Promise<void> {
    if (![...this.tracked.values()].some((t) => !t.lease)) return;
    const present = new Set((await this.deps.target.listServiceInstances(this.deps.migrationId, 'agent')).map((i) => i.id));
    for (const t of [...this.tracked.values()]) {
      if (!t.lease && !present.has(t.definition.id)) await this.registerAgain(t, t.definition);
    }
  }

  private async beat(t: Tracked, ok: boolean): Promise<void> {
    const check = t.rule.service!.check;
    if (ok) {
      t.failures = 0;
      t.successes++;
    } else {
      t.successes = 0;
      t.failures++;
    }
    let status: 'passing' | 'critical' = t.status;
    if (t.status === 'passing' && t.failures >= check.failuresBeforeCritical) status = 'critical';
    if (t.status === 'critical' && t.successes >= check.successBeforePassing) status = 'passing';
    const output = status === 'passing'
      ? (ok ? `etcd lease ${t.lease} is alive` : `etcd lease ${t.lease} could not be read ${t.failures} time(s) in a row; tolerated up to ${check.failuresBeforeCritical - 1}`)
      : (ok ? `etcd lease ${t.lease} is alive again (${t.successes} of ${check.successBeforePassing} reads before passing)` : `etcd lease ${t.lease} could not be read ${t.failures} time(s) in a row`);
    if (status !== t.status) this.deps.log(status === 'critical' ? 'warn' : 'info', `service ${t.definition.name} instance ${t.definition.id}: check ${status}: ${output}`);
    t.status = status;
    if (await this.deps.target.updateCheck(checkIdOf(t.definition.id), status, output)) return;
    await this.registerAgain(t, { ...t.definition, ...(t.definition.check ? { check: { ...t.definition.check, status } } : {}) });
  }

  /**
   * The agent lost `t`'s instance (restarted without its data, or deregistered by
   * hand): registers `definition` again, unless a change replaced or removed the
   * instance meanwhile (its check gone because a key lost its lease or was
   * deleted, not because the agent lost it): registering it then would undo the change.
   */
  private async registerAgain(t: Tracked, definition: ServiceDefinition): Promise<void> {
    await this.serially(async () => {
      if (this.tracked.get(t.definition.id) !== t) return;
      this.deps.log('warn', `the agent no longer knows instance ${t.definition.id}; registering it again`);
      await this.deps.target.registerService(definition);
      this.stats.registered++;
    });
  }

  /**
   * Runs `fn` after every earlier call has settled. The watch's changes and a
   * beat's re-registration go through here, so a beat never registers a
   * definition that a change replaced while the beat waited on Consul.
   */
  private serially<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private count(): void {
    this.stats.instances = this.tracked.size;
    this.stats.critical = [...this.tracked.values()].filter((t) => t.status === 'critical').length;
  }
}

/** What Consul serves of a definition (not the check's name or last status). */
function fingerprint(d: ServiceDefinition): string {
  const meta = Object.entries(d.meta).sort(([a], [b]) => (a < b ? -1 : 1));
  return JSON.stringify([d.id, d.name, d.address, d.port, [...d.tags].sort(), meta, d.check?.ttlSeconds ?? null, d.check?.deregisterCriticalAfterSeconds ?? null]);
}

function deregisterAfter(spec: ServiceSpec): { deregisterCriticalAfterSeconds?: number } {
  return spec.check.deregisterCriticalAfterSeconds ? { deregisterCriticalAfterSeconds: spec.check.deregisterCriticalAfterSeconds } : {};
}
