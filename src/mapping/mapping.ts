import { DEFAULT_STATE_PREFIX, type ParsedConfig, type RuleConfig, type RuleDefaults } from '../config/load.js';
import { ConfigError, nodeAt, positionOf, type Position } from '../config/schema.js';
import { DEFAULT_MAX_VALUE_BYTES } from '../stores/txn-batcher.js';
import { isServableKey } from './escape.js';

/** A rule of `migration.yaml` after validation, ready for routing. */
export interface CompiledRule extends Readonly<RuleConfig> {
  /** Position in `rules:` (0-based), for messages and stable ordering. */
  readonly index: number;
  /** `from` as UTF-8 bytes: etcd keys are matched byte by byte. */
  readonly fromBytes: Buffer;
}

export type MappingWarningCode = 'from-without-trailing-slash' | 'to-without-trailing-slash' | 'to-ignored-on-keep' | 'to-ignored-on-service';

/** Something legal but probably unintended in the rules; the audit shows these. */
export interface MappingWarning {
  code: MappingWarningCode;
  /** The rule's name. */
  rule: string;
  /** The field, as in configuration errors (`rules[2].from`). */
  path: string;
  message: string;
  /** Where in the file, when the mapping came from one. */
  file: string | undefined;
  position: Position | undefined;
}

/**
 * The compiled mapping: every rule validated against the others, ordered for
 * longest-prefix lookup. Build it with {@link compileMapping}; `loadConfig`
 * and `parseConfig` return one, so commands never compile it themselves.
 */
export interface Mapping {
  /** The rules in the order of the file. */
  readonly rules: readonly CompiledRule[];
  /** Every rule, longest `from` first: the first whose `from` is a byte prefix of a key routes it. */
  readonly routingOrder: readonly CompiledRule[];
  /** The `copy` rules; their `to` prefixes are pairwise disjoint, so at most one holds any Consul key. */
  readonly copyRules: readonly CompiledRule[];
  /** The `service` rules: their keys become instances in Consul's catalog, not KV keys. */
  readonly serviceRules: readonly CompiledRule[];
  /** `state.prefix`: the tool's own keys in Consul, outside every rule's `to`. */
  readonly statePrefix: string;
  readonly defaults: Readonly<RuleDefaults>;
  /** `target.limits.maxValueBytes`, else Consul's default `kv_max_value_size` (commands that reach Consul replace the default with the agent's: `openDatacenters`). */
  readonly maxValueBytes: number;
  /**
   * The agent refuses `/v1/kv` keys outside Consul 1.21.5's character set (escape.ts): set by
   * commands that reach Consul (`openDatacenters`, the audit's and plan's routers); unset, the usual rules.
   */
  readonly strictKeys?: boolean;
  readonly warnings: readonly MappingWarning[];
}

/**
 * Validates the rules against each other and compiles them. Throws
 * {@link ConfigError} (exit 2) naming the file, line and column of the
 * offending field, what is wrong and what is allowed:
 * a duplicate rule name or `from`; a copy rule whose `to` is empty, is not a
 * key Consul can serve (leading `/`, `//`, a `.`/`..` segment, a non-printable
 * character, a leading or trailing space) or contains `%`; a `to` inside the
 * state prefix or containing it; two copy rules whose `to` prefixes overlap.
 * A `keep` rule's `to` is never used and is not checked.
 *
 * Why `%` is refused in `to`: Consul 1.21.6+ percent-decodes a whole key a
 * second time when it can, and refuses it when the result holds `..` or a
 * space. A `%` in the prefix would make that depend on the text after it,
 * across the join, so the escape could no longer promise servable keys.
 */
export function compileMapping(loaded: ParsedConfig): Mapping {
  const { config } = loaded;
  const where = locator(loaded);
  const file = loaded.file ?? '(configuration)';
  const fail = (path: (string | number)[], message: string, hint?: string): never => {
    throw new ConfigError(file, where(path), dotted(path), message, hint);
  };

  const statePrefix = config.state.prefix;
  const stateCheck = isServableKey(statePrefix);
  if (!stateCheck.ok) fail(['state', 'prefix'], `"${statePrefix}" is not a key prefix Consul can serve: ${stateCheck.detail}`, 'Use a prefix such as "_migrate/".');
  if (statePrefix.includes('%')) fail(['state', 'prefix'], `"${statePrefix}" contains "%"; allowed: a prefix without "%", such as "_migrate/"`);

  const rules: CompiledRule[] = config.rules.map((rule, index) => Object.freeze({ ...rule, index, fromBytes: Buffer.from(rule.from, 'utf8') }));
  const warnings: MappingWarning[] = [];
  const byName = new Map<string, CompiledRule>();
  const byFrom = new Map<string, CompiledRule>();
  const copyRules: CompiledRule[] = [];
  const serviceRules: CompiledRule[] = [];

  for (const rule of rules) {
    const at = (field: string) => ['rules', rule.index, field];
    const earlierName = byName.get(rule.name);
    if (earlierName) {
      fail(at('name'), `duplicate rule name "${rule.name}": ${describeRule(earlierName, where)} already has it; allowed: a name no other rule uses`, 'Rule names identify rules in state, reports and --rule; give each rule its own.');
    }
    byName.set(rule.name, rule);
    const earlierFrom = byFrom.get(rule.from);
    if (earlierFrom) {
      fail(at('from'), `duplicate from "${rule.from}": ${describeRule(earlierFrom, where)} already maps it; allowed: a from no other rule uses`, 'Merge the two rules, or make one of them a longer prefix (the longest matching from wins).');
    }
    byFrom.set(rule.from, rule);

    if (!rule.from.endsWith('/')) {
      warnings.push(warning(loaded, where, rule, 'from-without-trailing-slash', 'from',
        `from "${rule.from}" does not end in "/": prefixes match byte by byte, so it also routes keys such as "${rule.from}-other" and "${rule.from}x/…"`));
    }
    const explicitTo = loaded.document ? nodeAt(loaded.document, at('to')) !== undefined : rule.to !== rule.from;
    const explicitService = loaded.document ? nodeAt(loaded.document, at('service')) !== undefined : rule.service !== undefined && rule.action !== 'service';
    if (explicitService && rule.action !== 'service') {
      fail(at('service'), `service: describes a catalog registration, but the rule's action is ${rule.action}; allowed: service: only with action: service`, 'Set action: service, or remove the service block.');
    }
    if (rule.datacenters && rule.action !== 'copy') {
      fail(at('datacenters'), `datacenters: names where a copy rule's keys are written, but the rule's action is ${rule.action}; allowed: datacenters only with action: copy`,
        rule.action === 'service' ? 'A service rule registers on the configured agent, in its datacenter; point target.address at an agent of the datacenter that needs the instances.' : 'Remove datacenters from the rule.');
    }
    if (rule.action === 'service') {
      const service = rule.service!;
      const explicitFields = loaded.document ? nodeAt(loaded.document, [...at('service'), 'fields']) !== undefined : false;
      if (explicitFields && service.format !== 'json') {
        fail([...at('service'), 'fields'], `fields: names where a JSON value holds the address and port, but format is ${service.format}; allowed: fields only with format: json`);
      }
      if (explicitTo) warnings.push(warning(loaded, where, rule, 'to-ignored-on-service', 'to', `to "${rule.to}" is ignored: a service rule registers catalog instances, not KV keys`));
      serviceRules.push(rule);
      continue;
    }
    if (rule.action === 'keep') {
      if (explicitTo) warnings.push(warning(loaded, where, rule, 'to-ignored-on-keep', 'to', `to "${rule.to}" is ignored: a keep rule leaves its keys on etcd`));
      continue;
    }

    // A missing `to` defaults to `from`; point at `from` then, and say so.
    const toPath = explicitTo ? at('to') : at('from');
    const toIs = explicitTo ? `to "${rule.to}" is` : `to is not set, so it defaults to from "${rule.from}", which is`;
    const toFail = (message: string, hint?: string): never => {
      throw new ConfigError(file, where(toPath), dotted(at('to')), message, hint);
    };
    if (rule.to === '') {
      toFail(`an empty to maps into the whole Consul KV, which holds the state prefix "${statePrefix}" and every other application's keys; allowed: a non-empty prefix such as "${suggestTo(rule.from)}"`);
    }
    const check = isServableKey(rule.to);
    if (!check.ok) {
      toFail(`${toIs} not a key prefix Consul can serve (${check.reason}: ${check.detail}); allowed: printable UTF-8 without a leading "/", "//", "." or ".." segments, or leading/trailing spaces, such as "${suggestTo(rule.to)}"`,
        explicitTo ? undefined : 'Set to: explicitly; etcd prefixes usually begin with "/", Consul prefixes must not.');
    }
    if (rule.to.includes('%')) {
      toFail(`${toIs} a prefix with "%"; Consul 1.21.6+ percent-decodes keys a second time, so "%" in a prefix changes how every key below it is checked; allowed: a prefix without "%"`);
    }
    // The default state prefix too, under another state.prefix: other migrations keep their state there.
    for (const prefix of new Set([statePrefix, DEFAULT_STATE_PREFIX])) {
      const which = prefix === statePrefix ? `the state prefix "${prefix}", which holds migrate's own state` : `the default state prefix "${prefix}", which holds other migrations' state`;
      if (rule.to.startsWith(prefix)) {
        toFail(`${toIs} inside ${which}; allowed: a prefix that neither lies inside nor contains "${prefix}"`);
      } else if (prefix.startsWith(rule.to)) {
        toFail(`${toIs} a prefix of ${which}, so the rule's keys could land among it; allowed: a prefix that neither lies inside nor contains "${prefix}"`);
      }
    }
    for (const other of copyRules) {
      if (other.to.startsWith(rule.to) || rule.to.startsWith(other.to)) {
        const relation = other.to === rule.to ? 'the same prefix as' : rule.to.startsWith(other.to) ? 'inside' : 'a prefix of';
        toFail(`${toIs} ${relation} to "${other.to}" of ${describeRule(other, where)}: two etcd keys could land on one Consul key; allowed: a prefix that neither lies inside nor contains another copy rule's to`,
          'Give each copy rule its own Consul prefix, ending in "/" (for example "app/" and "app-legacy/").');
      }
    }
    if (rule.from.endsWith('/') && !rule.to.endsWith('/')) {
      warnings.push(warning(loaded, where, rule, 'to-without-trailing-slash', 'to',
        `to "${rule.to}" does not end in "/" but from "${rule.from}" does: "${rule.from}x" becomes "${rule.to}x"`));
    }
    copyRules.push(rule);
  }

  const routingOrder = [...rules].sort((a, b) => b.fromBytes.length - a.fromBytes.length || a.index - b.index);
  return Object.freeze({
    rules: Object.freeze(rules),
    routingOrder: Object.freeze(routingOrder),
    copyRules: Object.freeze(copyRules),
    serviceRules: Object.freeze(serviceRules),
    statePrefix,
    defaults: Object.freeze({ ...config.defaults }),
    maxValueBytes: config.target.limits?.maxValueBytes ?? DEFAULT_MAX_VALUE_BYTES,
    warnings: Object.freeze(warnings),
  });
}

type Locate = (path: (string | number)[]) => Position | undefined;

/** Where in migration.yaml a path (`['rules', 2, 'to']`) is, or its parent when it is absent. */
export function locator(loaded: ParsedConfig): Locate {
  const { document, lineCounter } = loaded;
  if (!document || !lineCounter) return () => undefined;
  const ctx = { file: loaded.file ?? '', lineCounter };
  return (path) => positionOf(nodeAt(document, path), ctx) ?? positionOf(nodeAt(document, path.slice(0, -1)), ctx);
}

/** `['rules', 2, 'to']` → `rules[2].to`, the form schema errors use. */
function dotted(path: (string | number)[]): string {
  return path.reduce<string>((out, part) => (typeof part === 'number' ? `${out}[${part}]` : out ? `${out}.${part}` : part), '');
}

function describeRule(rule: CompiledRule, where: Locate): string {
  const position = where(['rules', rule.index]);
  return `rule "${rule.name}" (rules[${rule.index}]${position ? `, line ${position.line}` : ''})`;
}

function warning(loaded: ParsedConfig, where: Locate, rule: CompiledRule, code: MappingWarningCode, field: string, message: string): MappingWarning {
  const path = ['rules', rule.index, field];
  return { code, rule: rule.name, path: dotted(path), message, file: loaded.file, position: where(path) };
}

/** A servable prefix resembling the given one, for "allowed: …" examples. */
function suggestTo(text: string): string {
  const cleaned = text.split('/').filter((segment) => segment !== '' && segment !== '.' && segment !== '..').map((segment) => segment.trim()).filter(Boolean).join('/');
  return cleaned && isServableKey(`${cleaned}/`).ok && !cleaned.includes('%') ? `${cleaned}/` : 'app/';
}
