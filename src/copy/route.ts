import type { Mapping } from '../mapping/mapping.js';
import { routeKey } from '../mapping/route.js';
import type { PlannedRoute } from './plan.js';

/**
 * The mapping's route of a key, as the copy of one rule sees it. The copy
 * reads only the keys the rule owns (`ruleRanges`: its `from` less the rules
 * nested in it), so a key routed anywhere else is no business of this rule.
 */
export function routeForCopy(mapping: Mapping, rule: string, key: Buffer, valueBytes: number): PlannedRoute {
  const route = routeKey(mapping, key, { valueBytes, maxValueBytes: mapping.maxValueBytes });
  if (route.kind === 'unmapped' || route.rule.name !== rule) return { kind: 'other-rule', rule: route.kind === 'unmapped' ? '' : route.rule.name };
  // routeKey only maps to keys Consul serves back (its property tests prove it for escaped keys).
  if (route.kind === 'mapped') return { kind: 'mapped', rule, target: route.target, leases: route.rule.leases };
  if (route.kind === 'unmappable') return { kind: 'skip', rule, reason: route.reason, detail: route.detail };
  // A keep or service rule's own key: never read by a copy rule.
  return { kind: 'other-rule', rule: route.rule.name };
}
