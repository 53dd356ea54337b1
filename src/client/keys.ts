import { isUtf8 } from 'node:buffer';
import { UsageError } from '../errors.js';
import { escapeKey } from '../mapping/escape.js';
import type { CompiledRule, Mapping } from '../mapping/mapping.js';
import { findRule, routeKey, routeTargetKey } from '../mapping/route.js';
import { formatKey } from '../report/keys.js';

/** A key as the application names it: etcd's key, as text (UTF-8) or bytes. */
export type KvKey = string | Uint8Array;

export function toKeyBytes(key: KvKey): Buffer {
  return typeof key === 'string' ? Buffer.from(key, 'utf8') : Buffer.isBuffer(key) ? key : Buffer.from(key.buffer, key.byteOffset, key.byteLength);
}

/**
 * Where one application key lives in each store. `consulKey` is undefined
 * when the key cannot exist in Consul (`whyNotInConsul` says why): a `keep`
 * rule, or a key its rule rejects.
 */
export interface ClientKeyRoute {
  rule: CompiledRule;
  etcdKey: Buffer;
  consulKey: string | undefined;
  whyNotInConsul: string | undefined;
}

/**
 * Routes an application key (pure): the rule that holds it must be one of the
 * client's rules, else the call is refused, since nothing would tell which
 * store owns it.
 */
export function routeClientKey(mapping: Mapping, clientRules: ReadonlySet<string>, key: Buffer): ClientKeyRoute {
  const rule = findRule(mapping, key);
  if (!rule || !clientRules.has(rule.name)) {
    throw new UsageError('client_key_outside_rules', `The key ${formatKey(key)} ${rule ? `belongs to rule "${rule.name}"` : 'belongs to no rule of the mapping'}, not to this client's rules (${[...clientRules].map((r) => `"${r}"`).join(', ')}).`, {
      hint: 'Add the rule that holds the key to the `rules` option of createKvClient, or use the key prefixes of those rules.',
      details: { key: formatKey(key), rule: rule?.name },
    });
  }
  const route = routeKey(mapping, key);
  if (route.kind === 'mapped') return { rule, etcdKey: key, consulKey: route.target, whyNotInConsul: undefined };
  const why = route.kind === 'keep' ? `rule "${rule.name}" keeps its keys on etcd` : route.kind === 'unmappable' ? `rule "${rule.name}" cannot map it to Consul (${route.reason}: ${route.detail})` : 'no rule maps it';
  return { rule, etcdKey: key, consulKey: undefined, whyNotInConsul: why };
}

/** One rule's part of a prefix watch: what to watch in each store. */
export interface WatchPlanEntry {
  rule: CompiledRule;
  /** The etcd prefix: the watched prefix, or the rule's `from` when the rule lies inside it. */
  etcdPrefix: Buffer;
  /**
   * A Consul prefix holding every mapped key under `etcdPrefix` (it may hold
   * more; {@link consulKeyInPlan} filters); undefined for a `keep` rule.
   */
  consulPrefix: string | undefined;
}

/**
 * Splits a prefix watch over the client's rules (pure): a rule takes part
 * when it routes the prefix itself, or when its `from` lies under the prefix.
 * Keys under the prefix that belong to other rules are not watched.
 */
export function planWatch(mapping: Mapping, clientRules: readonly string[], prefix: Buffer): WatchPlanEntry[] {
  const owner = findRule(mapping, prefix);
  const plan: WatchPlanEntry[] = [];
  for (const name of clientRules) {
    const rule = mapping.rules.find((r) => r.name === name);
    if (!rule) continue;
    let etcdPrefix: Buffer;
    if (owner === rule) etcdPrefix = prefix;
    else if (rule.fromBytes.length > prefix.length && rule.fromBytes.subarray(0, prefix.length).equals(prefix)) etcdPrefix = rule.fromBytes;
    else continue;
    plan.push({ rule, etcdPrefix, consulPrefix: rule.action === 'copy' ? consulPrefixFor(rule, etcdPrefix) : undefined });
  }
  if (plan.length === 0) {
    throw new UsageError('client_watch_outside_rules', `The watched prefix ${formatKey(prefix)} holds no key of this client's rules (${clientRules.map((r) => `"${r}"`).join(', ')}).`, {
      hint: "Watch a prefix inside one of the client's rules (their `from` in migration.yaml), or add the rule to the `rules` option.",
      details: { prefix: formatKey(prefix) },
    });
  }
  return plan;
}

/**
 * The Consul prefix under which every key of `etcdPrefix` lands. The escape
 * codec looks at whole segments, so only the complete segments of the part
 * after `from` are kept, and only when they come through unchanged.
 */
function consulPrefixFor(rule: CompiledRule, etcdPrefix: Buffer): string {
  const suffix = etcdPrefix.subarray(rule.fromBytes.length);
  const slash = suffix.lastIndexOf(0x2f);
  if (slash < 0) return rule.to;
  const whole = suffix.subarray(0, slash + 1);
  if (!isUtf8(whole)) return rule.to;
  const text = whole.toString('utf8');
  if (rule.keys === 'escape' && escapeKey(whole) !== text) return rule.to;
  return rule.to + text;
}

/** The etcd key a Consul key of a watch stands for, or undefined when it is not part of the watch (pure). */
export function consulKeyInPlan(mapping: Mapping, entry: WatchPlanEntry, consulKey: string): Buffer | undefined {
  const route = routeTargetKey(mapping, consulKey);
  if (route.kind !== 'owned' || route.rule !== entry.rule) return undefined;
  return etcdKeyInPlan(mapping, entry, route.source) ? route.source : undefined;
}

/** Whether an etcd key of a watch belongs to it: under its prefix and routed to its rule (pure). */
export function etcdKeyInPlan(mapping: Mapping, entry: WatchPlanEntry, key: Buffer): boolean {
  return key.length >= entry.etcdPrefix.length && key.subarray(0, entry.etcdPrefix.length).equals(entry.etcdPrefix) && findRule(mapping, key) === entry.rule;
}
