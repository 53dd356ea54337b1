import type { Format } from '../cli/context.js';
import { renderEnvelope } from '../report/envelope.js';
import { datacenterLabel, unnamedPrimaryNote } from '../audit/datacenters.js';
import { datacenterText, formatBytes, mdCode, mdDatacenterTable, mdText, noInstanceText, plural } from '../audit/render.js';
import { formatCount } from '../report/count.js';
import { clipKey } from '../report/keys.js';
import type { PlanResult } from './plan.js';
import { SERVICE_UPKEEP, describeCheck, describeService, renderRunbook } from './runbook.js';

/** Text, JSON (one envelope) and markdown renderings of a plan. Values never appear. */
export function renderPlan(result: PlanResult, format: Format): string {
  if (format === 'json') return renderEnvelope('plan', result.blockers.length > 0 ? 'findings' : 'ok', { ...result });
  if (format === 'markdown') return renderPlanMarkdown(result);
  return renderPlanText(result);
}

/** A rule Consul owns (cut over, finalized): copy leaves it, whatever etcd holds. */
function ownedLine(result: PlanResult, r: PlanResult['rules'][number]): string | undefined {
  const owned = result.ownedByConsul.find((o) => o.rule === r.rule);
  return owned && `${owned.phase === 'finalized' ? 'finalized' : 'cut over'}: Consul owns its data; copy leaves it (${plural(r.keys, 'keys')} in etcd)`;
}

function ruleLine(r: PlanResult['rules'][number]): string {
  if (r.action === 'keep') return `keep ${plural(r.keptKeys, 'keys')} on etcd`;
  if (r.action === 'service') {
    const parts = [`${plural(r.instances, 'instances')} to register${r.instancesWithoutLease ? ` (${formatCount(r.instancesWithoutLease)} without a lease: no TTL check)` : ''}`];
    if (r.noInstanceKeys) parts.push(noInstanceText(r.noInstanceKeys).toUpperCase());
    return parts.join(', ');
  }
  const parts = [`${plural(r.copyKeys, 'keys')} (${formatBytes(r.copyValueBytes)}) to copy`, `${plural(r.sessions, 'sessions')}${r.sessionsAtLeast ? ' or more' : ''}`];
  if (r.escapedKeys) parts.push(`${formatCount(r.escapedKeys)} escaped`);
  if (r.skippedKeys) parts.push(`${formatCount(r.skippedKeys)} leased keys skipped`);
  if (r.persistedKeys) parts.push(`${formatCount(r.persistedKeys)} leased keys persisted`);
  if (r.unmappableKeys) parts.push(`${formatCount(r.unmappableKeys)} UNMAPPABLE`);
  return parts.join(', ');
}

/** Keys of service rules that make no instance are no blocker, but the copy moves them nowhere: said with the verdict too. */
function noInstanceNote(result: PlanResult): string {
  const n = result.totals.noInstanceKeys;
  if (n === 0) return '';
  const keys = n === 1 ? '1 key of a service rule makes' : `${formatCount(n)} keys of service rules make`;
  return `, but ${keys} no catalog instance (listed above): not registered, not copied, left on etcd only (fit the rule's service: block or its from to them, or give them a copy rule)`;
}

export function renderPlanText(result: PlanResult): string {
  const lines: string[] = [];
  const s = result.source;
  lines.push(`Plan for migration "${result.migrationId}" (${result.configFile}) against etcd ${s.version} at ${s.endpoint}, revision ${s.revision}${result.scope.interrupted ? ' (INTERRUPTED: partial)' : ''}`);
  lines.push(`Scope: ${result.scope.ranges.join(', ')}${result.scope.unreadable.length ? `; NOT readable: ${result.scope.unreadable.join(', ')}` : ''}`);
  lines.push(`Target limits: values up to ${formatBytes(result.maxValueBytes)} (${result.limitsBasis})`);
  lines.push('');
  lines.push('Rules:');
  for (const r of result.rules) lines.push(`  ${r.rule.padEnd(22)} ${`${r.from} → ${r.action === 'keep' ? '(stays on etcd)' : r.action === 'service' ? '(service catalog)' : r.to}`.padEnd(40)} ${ownedLine(result, r) ?? ruleLine(r)}`);
  if (result.unmapped) lines.push(`  ${'(unmapped)'.padEnd(22)} ${''.padEnd(40)} ${plural(result.unmapped.keys, 'keys')} outside every rule (unmapped: ${result.unmapped.policy})`);
  else lines.push('  (unmapped)             unknown: only the rules\' prefixes could be read');
  const t = result.totals;
  if (result.mappingChange) {
    lines.push('');
    lines.push(`Mapping change: ${result.configFile} is not the mapping migration "${result.migrationId}" recorded; ${result.mappingChange.refused.length > 0 ? 'copy and dualrun refuse it (the mapping_change_refused blocker says why)' : 'copy and dualrun take it with --accept-mapping-change'}.`);
    const left = result.mappingChange.leftBehind;
    if (left === null) lines.push('  (the recorded rules are not known: state recorded by an earlier release)');
    else if (left.length === 0 && !result.mappingChange.servicesLeft) lines.push('  Nothing is left behind in Consul unreplicated. Keys the change takes out of a rule (a narrower from:, a nested keep rule, leases: skip) are extraneous there: the dual-run\'s re-baseline deletes them, behind the delete guard (`migrate copy --dry-run --accept-mapping-change` lists them while no dual-run runs).');
    for (const r of result.mappingChange.servicesLeft ?? []) lines.push(`  rule ${r.rule}: ${plural(r.instances, 'instances')} stay registered on the agent, kept in step with etcd no more (the service rule was removed): \`migrate copy --delete-extraneous\` deregisters them`);
    for (const l of left ?? []) lines.push(`  rule ${l.rule}: ${l.consulKeys === null ? 'the keys' : plural(l.consulKeys, 'keys')} under ${l.to} stay in Consul, replicated no more (${l.why}); nothing deletes them (but a leased key, with its session, when its etcd lease ends): remove them once no application reads them (consul kv delete -recurse ${l.to})`);
  }
  lines.push('');
  lines.push(`Totals: ${plural(t.copyKeys, 'keys')} (${formatBytes(t.copyValueBytes)}) to copy, ${plural(t.sessions, 'sessions')} to create, ${formatCount(t.keptKeys)} kept on etcd, ${formatCount(t.skippedLeasedKeys)} leased keys skipped, ${formatCount(t.unmappedKeys)} unmapped, ${formatCount(t.unmappableKeys)} unmappable${result.services.length ? `, ${plural(t.instances, 'catalog instances')} to register` : ''}`);
  if (result.datacenters) {
    const dcs = result.datacenters;
    lines.push('');
    lines.push('Datacenters (each gets a full copy of its rules, with its own copy progress, checkpoint and verify):');
    for (const d of dcs) lines.push(`  ${datacenterLabel(d).padEnd(24)} ${datacenterText(d)}`);
    const written = dcs.reduce((n, d) => n + d.copyKeys, 0);
    lines.push(`  in all: ${plural(written, 'keys')} (${formatBytes(dcs.reduce((n, d) => n + d.copyValueBytes, 0))}) and ${plural(dcs.reduce((n, d) => n + d.sessions, 0), 'sessions')} written in ${plural(dcs.length, 'datacenters')}`);
    const note = unnamedPrimaryNote(dcs);
    if (note) lines.push(`  note: ${note}`);
  }
  if (result.services.length > 0) {
    lines.push('');
    lines.push('Service rules (instances registered on the migrator\'s Consul agent):');
    for (const s of result.services) {
      lines.push(`  ${s.rule}: ${describeService(s)}`);
      lines.push(`    ${describeCheck(s)}`);
      const problems = Object.entries(s.problems);
      if (problems.length) {
        lines.push(`    ${noInstanceText(problems.reduce((n, [, c]) => n + (c ?? 0), 0))}: ${problems.map(([p, c]) => `${p} ${formatCount(c ?? 0)}`).join(', ')}`);
        for (const e of s.examples.slice(0, 5)) lines.push(`      ${clipKey(e.key)}  (${e.detail})`);
      }
    }
    lines.push(`  ${SERVICE_UPKEEP}`);
  }
  if (result.unmappable.total > 0) {
    lines.push('');
    lines.push(`Unmappable keys (${formatCount(result.unmappable.total)}${result.unmappable.keys.length < result.unmappable.total ? `, first ${result.unmappable.keys.length} listed` : ''}):`);
    for (const k of result.unmappable.keys) lines.push(`  ${clipKey(k.key)}  [${k.rule}] ${k.reason}${k.size !== undefined ? ` (${formatCount(k.size)} bytes)` : ''}: ${k.detail}`);
  }
  if (result.unmapped && result.unmapped.keys > 0) {
    lines.push('');
    const shown = result.unmapped.examples.slice(0, 20);
    lines.push(`Unmapped keys (${formatCount(result.unmapped.keys)}${shown.length < result.unmapped.keys ? `, first ${shown.length}` : ''}):`);
    for (const k of shown) lines.push(`  ${clipKey(k)}`);
    if (shown.length < result.unmapped.keys) lines.push(`  … (${formatCount(result.unmapped.keys - shown.length)} more; --format json lists up to ${result.unmapped.examples.length})`);
  }
  lines.push('');
  if (result.blockers.length === 0) lines.push(`Result: no blockers${noInstanceNote(result)}; \`migrate copy --dry-run\` shows the exact operations.`);
  else {
    lines.push(`Result: ${result.blockers.length} blocker(s): exit 1.`);
    for (const b of result.blockers) lines.push(`  BLOCKER ${b.code}: ${b.message}\n          next: ${b.hint}`);
  }
  return `${lines.join('\n')}\n`;
}

export function renderPlanMarkdown(result: PlanResult): string {
  const out: string[] = [];
  const t = result.totals;
  out.push(`# Migration plan: ${result.migrationId}`, '');
  out.push(result.blockers.length ? `**${result.blockers.length} blocker(s)** remain.` : '**No blockers.**', '');
  out.push(`etcd ${result.source.version}, cluster ${result.source.clusterId}, revision ${result.source.revision}; mapping \`${result.configFile}\`; values up to ${formatBytes(result.maxValueBytes)} (${mdText(result.limitsBasis)}).`, '');
  out.push('| Rule | From → To | Policy | Keys to copy | Bytes | Sessions | Kept | Skipped (leased) | Unmappable | Instances |', '|---|---|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of result.rules) {
    out.push(`| ${mdCode(r.rule)} | ${mdCode(r.from)} → ${r.action === 'keep' ? '(etcd)' : r.action === 'service' ? '(catalog)' : mdCode(r.to)} | ${r.action}, keys: ${r.keysPolicy}, leases: ${r.leasesPolicy} | ${formatCount(r.copyKeys)} | ${formatBytes(r.copyValueBytes)} | ${formatCount(r.sessions)} | ${formatCount(r.keptKeys)} | ${formatCount(r.skippedKeys)} | ${formatCount(r.unmappableKeys)} | ${r.action === 'service' ? formatCount(r.instances) : ''} |`);
  }
  out.push(`| **total** | | | ${formatCount(t.copyKeys)} | ${formatBytes(t.copyValueBytes)} | ${formatCount(t.sessions)} | ${formatCount(t.keptKeys)} | ${formatCount(t.skippedLeasedKeys)} | ${formatCount(t.unmappableKeys)} | ${result.services.length ? formatCount(t.instances) : ''} |`, '');
  if (result.unmapped) out.push(`Keys outside every rule: ${formatCount(result.unmapped.keys)} (\`unmapped: ${result.unmapped.policy}\`).`, '');
  if (result.datacenters) {
    out.push('## Datacenters', '');
    out.push('Consul\'s KV store is per datacenter: each gets a full copy of the rules copied there, with its own copy progress, checkpoint and verify.', '');
    out.push(...mdDatacenterTable(result.datacenters));
    const note = unnamedPrimaryNote(result.datacenters);
    if (note) out.push(mdText(note.charAt(0).toUpperCase() + note.slice(1)), '');
  }
  // What service rules register, and their checks, are in the runbook; here, the keys they cannot register.
  const noInstance = result.services.filter((s) => s.examples.length > 0);
  if (noInstance.length > 0) {
    out.push(`## Keys that make no catalog instance (${formatCount(t.noInstanceKeys)})`, '');
    out.push('| Key | Rule | Problem |', '|---|---|---|');
    for (const s of noInstance) for (const e of s.examples) out.push(`| ${mdCode(clipKey(e.key))} | ${mdCode(s.rule)} | ${e.detail.replace(/\|/g, '\\|')} |`);
    const listed = noInstance.reduce((n, s) => n + s.examples.length, 0);
    if (listed < t.noInstanceKeys) out.push(`| … ${formatCount(t.noInstanceKeys - listed)} more | | |`);
    out.push('');
  }
  if (result.unmappable.total > 0) {
    out.push(`## Unmappable keys (${formatCount(result.unmappable.total)})`, '');
    out.push('| Key | Rule | Reason | Detail |', '|---|---|---|---|');
    for (const k of result.unmappable.keys) out.push(`| ${mdCode(clipKey(k.key))} | ${mdCode(k.rule)} | ${k.reason} | ${k.detail.replace(/\|/g, '\\|')} |`);
    if (result.unmappable.keys.length < result.unmappable.total) out.push(`| … ${formatCount(result.unmappable.total - result.unmappable.keys.length)} more | | | |`);
    out.push('');
  }
  if (result.blockers.length) {
    out.push('## Blockers', '');
    for (const b of result.blockers) out.push(`- **${b.code}**: ${b.message}. Next: ${b.hint}`);
    out.push('');
  }
  out.push(renderRunbook(result));
  return `${out.join('\n')}\n`;
}
