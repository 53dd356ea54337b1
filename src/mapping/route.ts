import { isUtf8 } from 'node:buffer';
import { ESCAPE_CHAR, characterCount, escapeKey, isServableKey, keyTooLong, strictKeyRefusal, tryUnescapeKey, type ServableCheck, type UnmappableReason } from './escape.js';
import type { CompiledRule, Mapping } from './mapping.js';
import { prefixEnd, prefixRange } from '../stores/key-range.js';
import type { KeyRange, SourceReader } from '../stores/types.js';

export type { UnmappableReason } from './escape.js';

/**
 * Where one etcd key goes.
 * - `mapped`: written to Consul at `target`; `escaped` when the `escape` codec
 *   rewrote the part after `to`.
 * - `keep`: a `keep` rule holds it; it stays on etcd.
 * - `service`: a `service` rule holds it; it becomes a catalog instance
 *   (`src/services/`), never a KV key.
 * - `unmapped`: no rule's `from` is a prefix of it (`defaults.unmapped` says
 *   whether that is an error).
 * - `unmappable`: a copy rule holds it but it cannot be written, for `reason`.
 */
export type Route =
  | { kind: 'mapped'; rule: CompiledRule; target: string; escaped: boolean }
  | { kind: 'keep'; rule: CompiledRule }
  | { kind: 'service'; rule: CompiledRule }
  | { kind: 'unmapped' }
  | { kind: 'unmappable'; rule: CompiledRule; reason: UnmappableReason; detail: string };

export interface RouteOptions {
  /** Size of the key's value; checked against `maxValueBytes` when given. */
  valueBytes?: number;
  /** Overrides the mapping's `target.limits.maxValueBytes` (default 524288). */
  maxValueBytes?: number;
}

const UNMAPPED: Route = Object.freeze({ kind: 'unmapped' });

/**
 * Routes an etcd key (raw bytes) through the mapping: the longest `from` that
 * is a byte prefix of the key picks the rule (`/app` also matches `/apple`),
 * and the target is the key with `from` replaced by `to`. Pure and total.
 *
 * When that plain substitution is a key Consul serves ({@link isServableKey})
 * it is the target, unchanged, whatever the rule's `keys` policy, so existing
 * consumers keep reading the same keys. Otherwise `keys: reject` makes the key
 * `unmappable` with the first failing rule as reason, and `keys: escape`
 * writes `to` + {@link escapeKey}(the bytes after `from`). Under `escape`, a
 * key whose part after `from` contains `~`, the escape character, is escaped
 * too (`~` → `~7E`) even though Consul could serve it. A value larger than
 * `maxValueBytes` makes the key `unmappable` (`value-too-large`) under either
 * policy; key problems are reported first. Against an agent with Consul
 * 1.21.5's key rule (`mapping.strictKeys`), a target outside it is
 * `unmappable` (`key-charset`) under either policy.
 *
 * ## Why two etcd keys never share a Consul key
 *
 * The `collision` reason exists for findings, but the mapping makes
 * collisions impossible, so no runtime detector (and no memory for one) is
 * needed:
 *
 * 1. *Within a rule under `reject`*: the target is `to + s` for the bytes `s`
 *    after `from`; the key is `from + s`; equal targets mean equal `s`, hence
 *    equal keys.
 * 2. *Within a rule under `escape`*: plain targets are `to + s` with no `~` in
 *    `s`; escaped targets are `to + escapeKey(s)`, and `escapeKey(s)` always
 *    contains a `~` here: either `s` contains `~` or `%` (written `~7E`,
 *    `~25`), or `to + s` is not servable, which (with `to` servable and free
 *    of `%`) means `s` alone is not servable, and then the codec rewrites at
 *    least one byte as a `~` escape (escape.ts, "Unchanged when nothing needs
 *    escaping"). So a plain target never equals an escaped one; plain targets
 *    are injective as in 1, escaped ones because `escapeKey` has a left
 *    inverse. Uppercase-only hex and a decoder that accepts only the
 *    canonical spelling rule out `~2f`/`~2F` twins.
 * 3. *Across rules*: every target of a copy rule starts with its `to`, and
 *    `compileMapping` refuses two copy rules whose `to` values are equal or
 *    one a byte prefix of the other, so no string starts with both. `keep`
 *    rules write nothing.
 * 4. *Consul does not merge keys behind our back*: the store is flat and
 *    case-sensitive and does not normalise Unicode; the path cleaning that
 *    would merge `a//b` into `a/b` (1.22 cleans instead of redirecting) only
 *    touches keys that are not servable, and those are never sent. The state
 *    prefix is outside every `to` (also enforced at compile time).
 *
 * Property tests in `route.test.ts` check 2 and 3 on random keys.
 */
export function routeKey(mapping: Mapping, key: Buffer, options: RouteOptions = {}): Route {
  const rule = findRule(mapping, key);
  if (!rule) return UNMAPPED;
  if (rule.action === 'keep') return { kind: 'keep', rule };
  if (rule.action === 'service') return { kind: 'service', rule };

  const suffix = key.subarray(rule.fromBytes.length);
  let target: string;
  let escaped = false;
  if (!isUtf8(suffix)) {
    if (rule.keys !== 'escape') {
      const offset = rule.fromBytes.length + firstInvalidUtf8Offset(suffix);
      return { kind: 'unmappable', rule, reason: 'invalid-utf8', detail: `byte 0x${key[offset]!.toString(16).toUpperCase().padStart(2, '0')} at offset ${offset} is not valid UTF-8` };
    }
    target = rule.to + escapeKey(suffix);
    escaped = true;
  } else {
    const text = suffix.toString('utf8');
    const plain = rule.to + text;
    const check = isServableKey(plain);
    if (!check.ok && rule.keys !== 'escape') {
      // Character numbers in the etcd key, the one reports show (`from` + text, not `to` + text).
      const inKey = isServableKey(plain, characterCount(rule.from) - characterCount(rule.to)) as Extract<ServableCheck, { ok: false }>;
      return { kind: 'unmappable', rule, reason: inKey.reason, detail: inKey.detail };
    }
    if (check.ok && !(rule.keys === 'escape' && text.includes(ESCAPE_CHAR))) target = plain;
    else {
      target = rule.to + escapeKey(suffix);
      escaped = true;
    }
  }

  // An escaped key is longer than the etcd key: checked here, as the plain ones are by isServableKey.
  const long = escaped ? keyTooLong(target) : undefined;
  if (long) return { kind: 'unmappable', rule, reason: long.reason, detail: long.detail };
  // Consul 1.21.5 serves fewer keys, escaped or not (escape.ts).
  const strict = mapping.strictKeys ? strictKeyRefusal(target) : undefined;
  if (strict) return { kind: 'unmappable', rule, reason: strict.reason, detail: escaped ? `it escapes to ${JSON.stringify(target)}, and ${strict.detail.replace(/^the key /, 'that ')}` : strict.detail };
  const limit = options.maxValueBytes ?? mapping.maxValueBytes;
  if (options.valueBytes !== undefined && options.valueBytes > limit) {
    return { kind: 'unmappable', rule, reason: 'value-too-large', detail: `the value is ${options.valueBytes} bytes; the target accepts at most ${limit} (kv_max_value_size)` };
  }
  return { kind: 'mapped', rule, target, escaped };
}

/** The rule whose `from` is the longest byte prefix of `key`, if any. */
export function findRule(mapping: Mapping, key: Buffer): CompiledRule | undefined {
  const order = mapping.routingOrder;
  if (order.length < TRIE_RULES) {
    for (const rule of order) if (startsWith(key, rule.fromBytes)) return rule;
    return undefined;
  }
  let node: RuleTrie | undefined = tries.get(order);
  if (!node) tries.set(order, (node = ruleTrie(order)));
  // The deepest rule on the key's path through the trie has the longest `from`.
  let found = node.rule;
  for (let i = 0; i < key.length; i++) {
    const next: RuleTrie | undefined = node.next.get(key[i]!);
    if (!next) break;
    node = next;
    if (node.rule) found = node.rule;
  }
  return found;
}

/**
 * From this many rules on, {@link findRule} walks a trie of the `from` prefixes (as long as the
 * longest) instead of trying each rule: with 250 rules, trying each was a third of a verify's CPU.
 */
const TRIE_RULES = 16;

interface RuleTrie {
  rule?: CompiledRule;
  next: Map<number, RuleTrie>;
}

/** A mapping's routing order is never changed, and copies of a mapping share it: one trie each. */
const tries = new WeakMap<readonly CompiledRule[], RuleTrie>();

function ruleTrie(order: readonly CompiledRule[]): RuleTrie {
  const root: RuleTrie = { next: new Map() };
  for (const rule of order) {
    let node = root;
    for (const byte of rule.fromBytes) {
      let next = node.next.get(byte);
      if (!next) node.next.set(byte, (next = { next: new Map() }));
      node = next;
    }
    // Longest first, and no two rules share a `from`: the first to reach a node is its only rule.
    node.rule ??= rule;
  }
  return root;
}

/**
 * The etcd key ranges `rule` owns: its `from` prefix less the prefixes of the
 * rules nested in it, whose longer `from` takes their keys ({@link findRule}).
 * Disjoint, in key order.
 */
export function ruleRanges(mapping: Mapping, rule: Pick<CompiledRule, 'fromBytes'>): KeyRange[] {
  const own = rule.fromBytes;
  const nested = mapping.rules.filter((r) => r.fromBytes.length > own.length && startsWith(r.fromBytes, own)).map((r) => r.fromBytes).sort(Buffer.compare);
  const ranges: KeyRange[] = [];
  const whole = prefixRange(own);
  let start = whole.start;
  let hole: Buffer | undefined;
  for (const next of nested) {
    // A rule nested in a nested rule is inside that one's hole already.
    if (hole && startsWith(next, hole)) continue;
    hole = next;
    if (Buffer.compare(start, hole) < 0) ranges.push({ start, end: hole });
    start = prefixEnd(hole);
    // Nothing sorts after a prefix of 0xff bytes only.
    if (start.length === 0) return ranges;
  }
  if (whole.end.length === 0 || Buffer.compare(start, whole.end) < 0) ranges.push({ start, end: whole.end });
  return ranges;
}

/** How many etcd keys at `revision` `rule` owns ({@link ruleRanges}): what its reports count as its source keys. */
export async function countRuleKeys(source: Pick<SourceReader, 'count'>, mapping: Mapping, rule: Pick<CompiledRule, 'fromBytes'>, revision: number): Promise<number> {
  let keys = 0;
  for (const range of ruleRanges(mapping, rule)) keys += await source.count(range, revision);
  return keys;
}

/** Whether `key` begins with `prefix`. A loop: `from` is short, and Buffer.compare with offsets costs more (100,000 keys: 18–43 ms against 3–7). */
function startsWith(key: Buffer, prefix: Buffer): boolean {
  if (key.length < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (key[i] !== prefix[i]) return false;
  return true;
}

/**
 * Who a key found in Consul belongs to, for verify (extra keys) and the
 * reverse mirror:
 * - `owned`: the copy rule whose `to` holds it, and the one etcd key that
 *   {@link routeKey} sends there;
 * - `foreign`: inside a copy rule's `to`, but no etcd key maps to it (written
 *   by someone else, a non-canonical escape, or a key that a longer `from`
 *   routes elsewhere);
 * - `state`: under the state prefix, migrate's own;
 * - `outside`: under no copy rule's `to`; never touched.
 */
export type TargetRoute =
  | { kind: 'owned'; rule: CompiledRule; source: Buffer; escaped: boolean }
  | { kind: 'foreign'; rule: CompiledRule; detail: string }
  | { kind: 'state' }
  | { kind: 'outside' };

const STATE: TargetRoute = Object.freeze({ kind: 'state' });
const OUTSIDE: TargetRoute = Object.freeze({ kind: 'outside' });

/** Inverts {@link routeKey} for a Consul key (see {@link TargetRoute}). */
export function routeTargetKey(mapping: Mapping, target: string): TargetRoute {
  if (target.startsWith(mapping.statePrefix)) return STATE;
  // `to` prefixes are pairwise disjoint, so the first match is the only one.
  const rule = mapping.copyRules.find((candidate) => target.startsWith(candidate.to));
  if (!rule) return OUTSIDE;
  const suffix = target.slice(rule.to.length);
  let sourceSuffix: Buffer;
  if (rule.keys === 'escape' && suffix.includes(ESCAPE_CHAR)) {
    const decoded = tryUnescapeKey(suffix);
    if (!decoded) return { kind: 'foreign', rule, detail: 'the part after to contains "~" but is not a canonical escape' };
    sourceSuffix = decoded;
  } else {
    sourceSuffix = Buffer.from(suffix, 'utf8');
  }
  const source = Buffer.concat([rule.fromBytes, sourceSuffix]);
  const forward = routeKey(mapping, source);
  if (forward.kind === 'mapped' && forward.target === target) return { kind: 'owned', rule, source, escaped: forward.escaped };
  const detail =
    forward.kind === 'mapped' || forward.kind === 'keep' || forward.kind === 'service'
      ? `the etcd key it would come from belongs to rule "${forward.rule.name}"${forward.kind === 'mapped' ? ` and maps to another key` : forward.kind === 'keep' ? ', which keeps it on etcd' : ', which registers it in the catalog'}`
      : forward.kind === 'unmappable'
        ? `the etcd key it would come from is unmappable (${forward.reason})`
        : 'no etcd key maps to it';
  return { kind: 'foreign', rule, detail };
}

/** Offset of the first byte that is not part of well-formed UTF-8 (the buffer is known to be invalid). */
function firstInvalidUtf8Offset(bytes: Buffer): number {
  // isUtf8 on growing prefixes would be quadratic; decode once and compare.
  const text = bytes.toString('utf8');
  let offset = 0;
  for (const character of text) {
    const length = Buffer.byteLength(character, 'utf8');
    if (character === '\uFFFD' && !(bytes[offset] === 0xef && bytes[offset + 1] === 0xbf && bytes[offset + 2] === 0xbd)) return offset;
    offset += length;
  }
  return offset;
}
