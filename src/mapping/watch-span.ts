import { prefixEnd } from '../stores/key-range.js';
import type { KeyRange } from '../stores/types.js';
import type { CompiledRule, Mapping } from './mapping.js';

/**
 * The one etcd range the dual-run watches: from the lowest `from` of the copy
 * and service rules to the end of the highest, so that every change comes in
 * revision order on one stream (DESIGN §3). `undefined` without such rules.
 * etcd checks a watch's read permission over the whole range, gaps between
 * the rules included.
 */
export function watchSpan(mapping: Mapping): KeyRange | undefined {
  const froms = [...mapping.copyRules, ...mapping.serviceRules].map((r) => r.fromBytes);
  if (froms.length === 0) return undefined;
  const start = froms.reduce((a, b) => (Buffer.compare(a, b) <= 0 ? a : b));
  const ends = froms.map(prefixEnd);
  const end = ends.some((e) => e.length === 0) ? Buffer.alloc(0) : ends.reduce((a, b) => (Buffer.compare(a, b) >= 0 ? a : b));
  return { start, end };
}

/**
 * The `keep` rules whose keys fall, at least in part, inside the watch span
 * between the rules it is for (not nested in one of them): the migrator's etcd
 * role can read those keys, and the dual-run receives their changes (and
 * ignores them).
 */
export function keepRulesInWatchSpan(mapping: Mapping): CompiledRule[] {
  const span = watchSpan(mapping);
  if (!span) return [];
  const watched = [...mapping.copyRules, ...mapping.serviceRules];
  return mapping.rules.filter((rule) => {
    if (rule.action !== 'keep') return false;
    if (watched.some((w) => rule.fromBytes.subarray(0, w.fromBytes.length).equals(w.fromBytes))) return false;
    const end = prefixEnd(rule.fromBytes);
    const startsBeforeSpanEnd = span.end.length === 0 || Buffer.compare(rule.fromBytes, span.end) < 0;
    const endsAfterSpanStart = end.length === 0 || Buffer.compare(end, span.start) > 0;
    return startsBeforeSpanEnd && endsAfterSpanStart;
  });
}
