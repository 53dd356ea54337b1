import type { KeyPolicy, LeasePolicy, RuleAction, ServiceSpec, UnmappedPolicy } from '../config/load.js';
import type { CompiledRule, Mapping } from '../mapping/mapping.js';
import { routeKey, type UnmappableReason } from '../mapping/route.js';

/**
 * The audit's view of where a key goes: the mapping's own `routeKey` (one
 * key translator, STYLE §8). With a mapping file, the file's rules; without
 * one, the identity mapping with one leading `/` stripped, which is what the
 * audit judges keys against before anybody has written rules.
 */
export interface RuleRef {
  readonly name: string;
  readonly from: string;
  readonly to: string;
  readonly action: RuleAction;
  readonly keys: KeyPolicy;
  readonly leases: LeasePolicy;
  /** `from` as bytes (service rules read the key's segments after it). */
  readonly fromBytes: Buffer;
  /** `action: service` only: how its keys become catalog instances. */
  readonly service?: ServiceSpec;
}

export type Routed =
  | { kind: 'mapped'; rule: RuleRef; escaped: boolean }
  | { kind: 'keep'; rule: RuleRef }
  | { kind: 'service'; rule: RuleRef }
  | { kind: 'unmapped' }
  | { kind: 'unmappable'; rule: RuleRef; reason: UnmappableReason; detail: string };

export interface KeyRouter {
  /** `mapping`: a migration.yaml; `identity`: none (keys keep their names, minus one leading `/`). */
  readonly mode: 'mapping' | 'identity';
  /** The rules as reported (the identity mapping has one pseudo-rule). */
  readonly rules: readonly RuleRef[];
  readonly unmapped: UnmappedPolicy;
  route(key: Buffer, valueBytes: number): Routed;
}

/** The name of the identity mapping's pseudo-rule in reports. */
export const IDENTITY_RULE_NAME = '(identity)';

/** Routes with a compiled mapping from migration.yaml; `strictKeys`: the agent has Consul 1.21.5's key rule. */
export function mappingRouter(mapping: Mapping, maxValueBytes: number, strictKeys = false): KeyRouter {
  const options = { valueBytes: 0, maxValueBytes };
  if (strictKeys !== (mapping.strictKeys === true)) mapping = Object.freeze({ ...mapping, strictKeys });
  return {
    mode: 'mapping',
    rules: mapping.rules,
    unmapped: mapping.defaults.unmapped,
    route(key, valueBytes) {
      options.valueBytes = valueBytes;
      return routeKey(mapping, key, options);
    },
  };
}

/**
 * The identity mapping: `/x` → `x` and `x` → `x`, keys rejected (never
 * escaped) so that everything that would not map 1:1 shows. Built as a
 * mapping literal because `compileMapping` rightly refuses an empty `to`.
 */
export function identityRouter(maxValueBytes: number, strictKeys = false): KeyRouter {
  const base = { name: IDENTITY_RULE_NAME, to: '', action: 'copy', keys: 'reject', leases: 'session' } as const;
  const slash: CompiledRule = Object.freeze({ ...base, from: '/', index: 0, fromBytes: Buffer.from('/') });
  const rest: CompiledRule = Object.freeze({ ...base, from: '', index: 1, fromBytes: Buffer.alloc(0) });
  const mapping: Mapping = {
    rules: [rest],
    routingOrder: [slash, rest],
    copyRules: [],
    serviceRules: [],
    statePrefix: '_migrate/',
    defaults: { keys: 'reject', leases: 'session', unmapped: 'skip' },
    maxValueBytes,
    warnings: [],
  };
  const router = mappingRouter(mapping, maxValueBytes, strictKeys);
  return { ...router, mode: 'identity', rules: [rest], unmapped: 'skip' };
}
