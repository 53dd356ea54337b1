import type { Mapping } from '../mapping/mapping.js';
import { routeKey } from '../mapping/route.js';
import type { PlannedRoute } from './plan.js';

/**
 * The mapping's route of a key, as the copy of one rule sees it: keys that
 * belong to a longer nested copy rule are that rule's business; keys of a
 * nested `keep` rule are reported as kept.
 */
export function routeForCopy(mapping: Mapping, rule: string, key: Buffer, valueBytes: number): PlannedRoute {
  const route = routeKey(mapping, key, { valueBytes, maxValueBytes: mapping.maxValueBytes });
  switch (route.kind) {
    case 'mapped':
      // routeKey only maps to keys Consul serves back (its property tests prove it for escaped keys).
      return route.rule.name === rule ? { kind: 'mapped', rule, target: route.target, leases: route.rule.leases } : { kind: 'other-rule', rule: route.rule.name };
    case 'keep':
      return { kind: 'skip', rule, reason: 'keep', detail: `kept on etcd by rule ${route.rule.name}` };
    case 'service':
      return { kind: 'other-rule', rule: route.rule.name };
    case 'unmappable':
      return route.rule.name === rule ? { kind: 'skip', rule, reason: route.reason, detail: route.detail } : { kind: 'other-rule', rule: route.rule.name };
    case 'unmapped':
      return { kind: 'other-rule', rule: '' };
  }
}
