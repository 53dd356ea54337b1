import type { Mapping } from '../mapping/mapping.js';
import { isServableKey } from '../mapping/escape.js';
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
    case 'mapped': {
      if (route.rule.name !== rule) return { kind: 'other-rule', rule: route.rule.name };
      // Consul's txn endpoint stores keys its KV endpoint cannot serve: never send one, whatever the route says.
      const servable = isServableKey(route.target);
      if (!servable.ok) return { kind: 'skip', rule, reason: servable.reason, detail: servable.detail };
      return { kind: 'mapped', rule, target: route.target, leases: route.rule.leases };
    }
    case 'keep':
      return { kind: 'skip', rule, reason: 'keep', detail: `kept on etcd by rule ${route.rule.name}` };
    case 'unmappable':
      return route.rule.name === rule ? { kind: 'skip', rule, reason: route.reason, detail: route.detail } : { kind: 'other-rule', rule: route.rule.name };
    case 'unmapped':
      return { kind: 'other-rule', rule: '' };
  }
}
