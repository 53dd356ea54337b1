import { stringify } from 'yaml';
import type { Format } from '../cli/context.js';
import { formatCount } from '../report/count.js';
import { clipKey } from '../report/keys.js';
import { REPORT_VERSION, renderEnvelope } from '../report/envelope.js';
import type { AuditResult } from './audit.js';
import { datacenterLabel, unnamedPrimaryNote, type DatacenterTally } from './datacenters.js';
import type { HistogramBucket } from './aggregate.js';
import type { Finding, FindingCode, Severity } from './findings.js';
import type { PrefixNode } from './prefix-tree.js';
import type { RuleTally } from './tally.js';

/**
 * Renderers of the audit report. JSON and YAML carry the whole
 * {@link AuditResult} (shape in `REPORT.md`); text is for a terminal;
 * markdown is a report to paste into a migration ticket. Keys are shown as
 * `formatKey` made them; values never appear anywhere.
 */
export function renderAudit(result: AuditResult, format: Format): string {
  const status = result.scope.interrupted ? 'interrupted' : result.blockers > 0 ? 'findings' : 'ok';
  switch (format) {
    case 'json':
      return renderEnvelope('audit', status, { ...result });
    case 'yaml':
      return stringify({ version: REPORT_VERSION, command: 'audit', status, ...result }, { lineWidth: 0 });
    case 'markdown':
      return renderMarkdown(result);
    default:
      return renderText(result);
  }
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(value >= 100 ? 0 : 1)} ${units[unit]}`;
}

/** A duration for people; estimates round up, so a sub-second copy is "about 1 s". */
export function formatSeconds(seconds: number): string {
  if (seconds < 1) return '1 s';
  if (seconds < 90) return `${Math.ceil(seconds)} s`;
  if (seconds < 5400) return `${Math.ceil(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

export function plural(n: number, unit: string): string {
  const singular = unit.endsWith('ies') ? `${unit.slice(0, -3)}y` : unit.endsWith('xes') ? unit.slice(0, -2) : unit.replace(/s$/, '');
  return `${formatCount(n)} ${n === 1 ? singular : unit}`;
}

function bucketLabel(buckets: HistogramBucket[], i: number, format: (n: number) => string): string {
  const le = buckets[i]!.le;
  const previous = i > 0 ? buckets[i - 1]!.le : null;
  if (le === null) return `>${format(previous!)}`;
  if (previous === null) return `≤${format(le)}`;
  return previous + 1 === le ? format(le) : `${format(previous + 1)}–${format(le)}`;
}

function histogramLine(buckets: HistogramBucket[], format: (n: number) => string = formatCount): string {
  const parts = buckets.map((b, i) => (b.count > 0 ? `${bucketLabel(buckets, i, format)}: ${formatCount(b.count)}` : '')).filter(Boolean);
  return parts.length ? parts.join(' · ') : 'none';
}

const bytesShort = (n: number) => (n < 1024 ? `${n} B` : formatBytes(n).replace('.0 ', ' '));
const secondsShort = (n: number) => (n < 60 ? `${n}s` : n < 3600 ? `${Math.round(n / 60)}m` : `${Math.round(n / 3600)}h`);

function modeLine(result: AuditResult): string {
  if (result.mode === 'mapping') return `mapping ${result.configFile} (migration "${result.migrationId}", ${plural(result.rules.length, 'rules')})`;
  return 'no mapping file: keys are judged under the identity mapping (each key keeps its name, one leading "/" stripped); write migration.yaml (`migrate init`) to judge real rules';
}

function verdict(result: AuditResult): string {
  const counts = countBySeverity(result.findings);
  if (result.scope.interrupted) return `INTERRUPTED, partial (${plural(counts.blocker, 'blockers')}, ${plural(counts.warning, 'warnings')}, ${counts.info} info so far): exit 130`;
  if (result.blockers > 0) return `${plural(counts.blocker, 'blockers')}, ${plural(counts.warning, 'warnings')}, ${counts.info} info: exit 1`;
  return `no blockers (${plural(counts.warning, 'warnings')}, ${counts.info} info)`;
}

function countBySeverity(findings: readonly Finding[]): Record<Severity, number> {
  const counts: Record<Severity, number> = { blocker: 0, warning: 0, info: 0 };
  for (const f of findings) counts[f.severity]++;
  return counts;
}

function exampleText(e: Finding['examples'][number]): string {
  const subject = (e.key === undefined ? undefined : clipKey(e.key)) ?? e.prefix ?? (e.lease ? `lease ${e.lease}` : e.revision !== undefined ? `revision ${e.revision}` : e.rule ?? '');
  const extras: string[] = [];
  if (e.key && e.prefix) extras.push(`under ${e.prefix}`);
  if (e.size !== undefined && !e.detail) extras.push(`${formatCount(e.size)} bytes`);
  if (e.rule && subject !== e.rule) extras.push(`rule ${e.rule}`);
  if (e.detail) extras.push(e.detail);
  return extras.length ? `${subject} (${extras.join('; ')})` : subject;
}

function prefixLines(node: PrefixNode, top: number, indent: string, out: string[]): void {
  for (const child of node.children.slice(0, top)) {
    out.push(`${indent}${child.prefix.padEnd(Math.max(10, 40 - indent.length))} ${formatCount(child.keys).padStart(10)} keys ${formatBytes(child.valueBytes).padStart(10)}${child.leasedKeys ? `  ${formatCount(child.leasedKeys)} leased` : ''}${child.maxVersion > 1 ? `  max version ${formatCount(child.maxVersion)}` : ''}`);
    prefixLines(child, top, `${indent}  `, out);
  }
  const hidden = node.children.slice(top);
  const otherKeys = hidden.reduce((n, c) => n + c.keys, 0) + (node.other?.keys ?? 0);
  const otherPrefixes = hidden.length + (node.other?.prefixes ?? 0);
  if (otherPrefixes > 0) out.push(`${indent}… ${plural(otherPrefixes, 'more prefixes')} with ${plural(otherKeys, 'keys')}`);
  if (node.depth > 0 && node.directKeys > 0 && node.children.length > 0) out.push(`${indent}(${plural(node.directKeys, 'keys')} directly under ${node.prefix})`);
}

/** Info findings whose hint proposes a rule worth writing: the text report shows it too. */
const SUGGESTING: ReadonlySet<FindingCode> = new Set(['service_registration_prefix']);

/** What a rule does with its keys, in one line. */
function ruleText(r: RuleTally): string {
  if (r.action === 'keep') return `keep ${plural(r.keptKeys, 'keys')} on etcd`;
  if (r.action === 'service') {
    return `${plural(r.instances, 'instances')} to register in the catalog${r.instancesWithoutLease ? ` (${formatCount(r.instancesWithoutLease)} without a lease: no TTL check)` : ''}${r.noInstanceKeys ? `, ${noInstanceText(r.noInstanceKeys)}` : ''}`;
  }
  return `${plural(r.copyKeys, 'keys')} (${formatBytes(r.copyValueBytes)}) to copy, ${plural(r.sessions, 'sessions')}, ${formatCount(r.unmappableKeys)} unmappable${r.escapedKeys ? `, ${formatCount(r.escapedKeys)} escaped` : ''}${r.skippedKeys ? `, ${formatCount(r.skippedKeys)} leased keys skipped` : ''}`;
}

/** What one datacenter gets written, in one line (the audit and the plan share it). */
export function datacenterText(d: DatacenterTally): string {
  if (d.rules.length === 0) return `no copy rule${d.instances ? `; ${plural(d.instances, 'catalog instances')} registered` : ''}`;
  return `${d.rules.join(', ')}: ${plural(d.copyKeys, 'keys')} (${formatBytes(d.copyValueBytes)}), ${plural(d.sessions, 'sessions')}${d.sessionsAtLeast ? ' or more' : ''}${d.instances ? `; ${plural(d.instances, 'catalog instances')} registered` : ''}`;
}

/** `3 keys make no instance`. */
export function noInstanceText(n: number): string {
  return `${formatCount(n)} ${n === 1 ? 'key makes' : 'keys make'} no instance`;
}

/** Prefixes of each usage pattern the text report names (the others are counted). */
const PATTERNS_SHOWN = 10;

export function renderText(result: AuditResult): string {
  const lines: string[] = [];
  const s = result.source;
  lines.push(`Audit of etcd ${s.version} at ${s.endpoint}, cluster ${s.clusterId}, revision ${s.revision}${result.scope.interrupted ? ' (INTERRUPTED: partial)' : ''}`);
  lines.push(`Mode: ${modeLine(result)}`);
  lines.push(`Scope: ${result.scope.ranges.join(', ')}${result.scope.unreadable.length ? `; NOT readable: ${result.scope.unreadable.join(', ')}` : ''}`);
  lines.push(`Target limits: ${result.limits.txnMaxOps} ops and ${formatBytes(result.limits.txnMaxBytes)} per txn, values up to ${formatBytes(result.limits.maxValueBytes)} (${result.limits.basis})`);
  lines.push('');
  const t = result.totals;
  lines.push(`Keys: ${formatCount(t.keys)} (${formatBytes(t.keyBytes)} of keys, ${formatBytes(t.valueBytes)} of values), ${formatCount(t.leasedKeys)} leased`);
  lines.push(`Prefixes (depth ${result.depth}, top ${result.top}):`);
  const prefixOut: string[] = [];
  prefixLines(result.prefixes, result.top, '  ', prefixOut);
  if (result.prefixes.directKeys > 0) prefixOut.push(`  (${plural(result.prefixes.directKeys, 'keys')} at the top level, outside any prefix)`);
  lines.push(...(prefixOut.length ? prefixOut : ['  (none)']));
  lines.push(`Value sizes: ${histogramLine(result.values.histogram, bytesShort)}`);
  if (result.values.largest.length) lines.push(`Largest values: ${result.values.largest.slice(0, 5).map((v) => `${clipKey(v.key)} ${formatBytes(v.size)}`).join(', ')}`);
  lines.push(`Writes per key (version): ${histogramLine(result.churn.versions)}`);
  lines.push(`Revisions since last change: ${histogramLine(result.churn.ages)}`);
  const l = result.leases;
  lines.push(`Leases: ${formatCount(l.count)}${l.untrackedKeys ? '+' : ''} holding ${plural(l.leasedKeys, 'keys')}; granted TTL (s): ${histogramLine(l.ttl, secondsShort)}; ${l.belowSessionMin} under 10 s, ${l.aboveSessionMax} over 24 h${l.expired ? `; ${l.expired} expired during the audit` : ''}`);
  const g = result.atomicGroups;
  lines.push(`Atomic groups: ${formatCount(g.multiKey)} multi-key revisions (of ${formatCount(g.revisions)}); ops per revision: ${histogramLine(g.histogram)}; ${g.overOps64} over 64 ops, ${g.overOps128} over 128 ops, ${g.overBytes} over the byte limit; ${g.splitAtTarget} would be split at this target (${result.limits.revisionTxnOps} ops / ${formatBytes(result.limits.revisionTxnBytes)} per revision txn)`);
  if (result.patterns.kubernetes.length || result.patterns.locks.length || result.patterns.registrations.length) {
    lines.push('Patterns:');
    // The first few of each kind, as the prefixes are shown; --format json lists them all.
    const shown = <T>(kind: string, found: readonly T[], line: (p: T) => string) => {
      for (const p of found.slice(0, PATTERNS_SHOWN)) lines.push(line(p));
      if (found.length > PATTERNS_SHOWN) lines.push(`  ${kind.padEnd(13)} … and ${plural(found.length - PATTERNS_SHOWN, 'more prefixes')} (--format json lists them)`);
    };
    shown('kubernetes', result.patterns.kubernetes, (p) => `  kubernetes    ${p.prefix} (${plural(p.keys, 'keys')})`);
    shown('lock/election', result.patterns.locks, (p) => `  lock/election ${p.prefix} (${plural(p.keys, 'keys')}, ${formatCount(p.leasedKeys)} leased)`);
    shown('registration', result.patterns.registrations, (p) => `  registration  ${p.prefix} (${plural(p.keys, 'keys')})`);
  }
  if (result.mode === 'mapping') {
    lines.push('Rules:');
    for (const r of result.rules) lines.push(`  ${r.rule.padEnd(20)} ${ruleText(r)}`);
    if (result.unmapped) lines.push(`  ${'(unmapped)'.padEnd(20)} ${plural(result.unmapped.keys, 'keys')} (unmapped: ${result.unmapped.policy})`);
  }
  if (result.datacenters) {
    lines.push('Datacenters (each gets a full copy of its rules, with its own checkpoint and verify):');
    for (const d of result.datacenters) lines.push(`  ${datacenterLabel(d).padEnd(24)} ${datacenterText(d)}: about ${formatSeconds(d.estimateSeconds)}`);
    const note = unnamedPrimaryNote(result.datacenters);
    if (note) lines.push(`  note: ${note}`);
  }
  if (result.sample) {
    const sm = result.sample;
    lines.push(`Sample (${(sm.durationMs / 1000).toFixed(1)} s): ${formatCount(sm.writes)} writes in ${formatCount(sm.revisions)} revisions (${sm.writesPerSecond} writes/s, ${sm.revisionsPerSecond} revisions/s); largest live group ${sm.largestGroup} ops; ${sm.groupsOverTarget} live group(s) larger than one Consul txn`);
    for (const p of sm.prefixes.slice(0, result.top)) lines.push(`  ${p.prefix.padEnd(38)} ${String(p.writesPerSecond).padStart(8)} writes/s (${p.replicatedPerSecond} replicated)`);
  }
  const e = result.estimate;
  lines.push(`Copy estimate: ${plural(e.keys, 'keys')} (${formatBytes(e.valueBytes)})${e.datacenters !== undefined ? ` written to ${plural(e.datacenters, 'datacenters')} one after the other` : ''}, ${plural(e.sessions, 'sessions')}, ${formatCount(e.singlePutKeys)} single PUTs: about ${formatSeconds(e.seconds)}`);
  lines.push(`  basis: ${e.basis.text}`);
  lines.push('');
  const counts = countBySeverity(result.findings);
  lines.push(`Findings (${counts.blocker} blocker, ${counts.warning} warning, ${counts.info} info):`);
  if (result.findings.length === 0) lines.push('  none');
  for (const f of result.findings) {
    lines.push(`  ${f.severity.toUpperCase().padEnd(8)} ${f.code.padEnd(28)} ${plural(f.count, f.unit)}: ${f.title}${f.rules.length ? ` [${f.rules.join(', ')}]` : ''}`);
    for (const example of f.examples) lines.push(`           - ${exampleText(example)}`);
    if (f.count > f.examples.length && f.examples.length > 0) lines.push(`           … and ${formatCount(f.count - f.examples.length)} more`);
    if (f.severity !== 'info' || SUGGESTING.has(f.code)) lines.push(`           next: ${f.hint}`);
  }
  lines.push('');
  lines.push(`Result: ${verdict(result)}.`);
  return `${lines.join('\n')}\n`;
}

/** Inline code for markdown, safe inside tables. */
export function mdCode(text: string): string {
  const escaped = text.replace(/\|/g, '\\|');
  return escaped.includes('`') ? `\`\` ${escaped} \`\`` : `\`${escaped}\``;
}

/** The datacenters as a markdown table (the audit adds a copy-time column). */
export function mdDatacenterTable<T extends DatacenterTally>(datacenters: readonly T[], estimate?: (d: T) => string): string[] {
  const rows = [
    `| Datacenter | Rules copied there | Keys to copy | Bytes | Sessions |${estimate ? ' Copy time |' : ''}`,
    `|---|---|---:|---:|---:|${estimate ? '---:|' : ''}`,
  ];
  for (const d of datacenters) {
    const name = d.datacenter === null ? 'the target\'s datacenter (primary)' : `${mdCode(d.datacenter)}${d.primary ? ' (primary)' : ''}`;
    rows.push(`| ${name} | ${d.rules.length ? d.rules.map(mdCode).join(', ') : 'none'} | ${formatCount(d.copyKeys)} | ${formatBytes(d.copyValueBytes)} | ${formatCount(d.sessions)}${d.sessionsAtLeast ? '+' : ''} |${estimate ? ` about ${estimate(d)} |` : ''}`);
  }
  rows.push('');
  return rows;
}

export function mdText(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/([*_<>[\]])/g, '\\$1');
}

function mdExample(e: Finding['examples'][number]): string {
  const subject = (e.key === undefined ? undefined : clipKey(e.key)) ?? e.prefix;
  const head = subject !== undefined ? mdCode(subject) : e.lease ? `lease ${e.lease}` : e.revision !== undefined ? `revision ${e.revision}` : e.rule ? mdCode(e.rule) : '';
  const extras: string[] = [];
  if (e.key && e.prefix) extras.push(`under ${mdCode(e.prefix)}`);
  if (e.size !== undefined && !e.detail) extras.push(`${formatCount(e.size)} bytes`);
  if (e.rule && subject !== undefined) extras.push(`rule ${mdCode(e.rule)}`);
  if (e.detail) extras.push(mdText(e.detail));
  return extras.length ? `${head}: ${extras.join('; ')}` : head;
}

export function renderMarkdown(result: AuditResult): string {
  const out: string[] = [];
  const s = result.source;
  const counts = countBySeverity(result.findings);
  out.push('# etcd → Consul migration audit', '');
  if (result.scope.interrupted) out.push(`**Verdict: interrupted, partial** (${plural(counts.blocker, 'blockers')}, ${plural(counts.warning, 'warnings')}, ${counts.info} info so far).`, '');
  else out.push(result.blockers > 0 ? `**Verdict: ${plural(counts.blocker, 'blockers')}** to resolve before copying (${plural(counts.warning, 'warnings')}, ${counts.info} info).` : `**Verdict: no blockers** (${plural(counts.warning, 'warnings')}, ${counts.info} info).`, '');
  if (result.scope.interrupted) out.push('> **Interrupted**: the figures cover only what was read (and sampled) before Ctrl-C.', '');
  out.push('| | |', '|---|---|');
  out.push(`| etcd | ${s.version}, cluster ${s.clusterId}, revision ${s.revision} |`);
  out.push(`| Mapping | ${mdText(modeLine(result))} |`);
  out.push(`| Scope | ${mdText(result.scope.ranges.join(', '))}${result.scope.unreadable.length ? `; **not readable**: ${mdText(result.scope.unreadable.join(', '))}` : ''} |`);
  out.push(`| Keys | ${formatCount(result.totals.keys)} (${formatBytes(result.totals.valueBytes)} of values), ${formatCount(result.totals.leasedKeys)} leased, ${formatCount(result.leases.count)} leases |`);
  out.push(`| Target limits | ${result.limits.txnMaxOps} ops, ${formatBytes(result.limits.txnMaxBytes)} per txn; values up to ${formatBytes(result.limits.maxValueBytes)} (${mdText(result.limits.basis)}) |`);
  out.push(`| Copy estimate | about **${formatSeconds(result.estimate.seconds)}** for ${plural(result.estimate.keys, 'keys')}, ${plural(result.estimate.sessions, 'sessions')}${result.estimate.datacenters !== undefined ? ` in ${plural(result.estimate.datacenters, 'datacenters')}` : ''} |`);
  out.push('');
  out.push('## Findings', '');
  if (result.findings.length === 0) out.push('None.', '');
  else {
    out.push('| Severity | Code | Count | What |', '|---|---|---:|---|');
    for (const f of result.findings) out.push(`| ${f.severity} | ${mdCode(f.code)} | ${plural(f.count, f.unit)} | ${mdText(f.title)} |`);
    out.push('');
    for (const f of result.findings) {
      out.push(`### ${f.severity}: \`${f.code}\` (${plural(f.count, f.unit)})`, '');
      out.push(`${mdText(f.title)}.${f.rules.length ? ` Rules: ${f.rules.map(mdCode).join(', ')}.` : ''}`, '');
      for (const example of f.examples) out.push(`- ${mdExample(example)}`);
      if (f.count > f.examples.length && f.examples.length > 0) out.push(`- … and ${formatCount(f.count - f.examples.length)} more`);
      if (f.examples.length) out.push('');
      out.push(`**Next:** ${mdText(f.hint)}`, '');
    }
  }
  out.push('## Prefixes', '');
  out.push(`Depth ${result.depth}, the ${result.top} largest per level.`, '');
  out.push('| Prefix | Keys | Values | Leased | Largest value | Max version |', '|---|---:|---:|---:|---:|---:|');
  const rows: string[] = [];
  const walk = (node: PrefixNode, indent: string) => {
    for (const child of node.children.slice(0, result.top)) {
      rows.push(`| ${indent}${mdCode(child.prefix)} | ${formatCount(child.keys)} | ${formatBytes(child.valueBytes)} | ${formatCount(child.leasedKeys)} | ${formatBytes(child.maxValueBytes)} | ${formatCount(child.maxVersion)} |`);
      walk(child, `${indent}&nbsp;&nbsp;`);
    }
  };
  walk(result.prefixes, '');
  out.push(...(rows.length ? rows : ['| (no keys) | | | | | |']), '');
  if (result.mode === 'mapping') {
    out.push('## Rules', '');
    out.push('| Rule | From → To | Action | Keys to copy | Bytes | Sessions | Unmappable | Kept | Instances |', '|---|---|---|---:|---:|---:|---:|---:|---:|');
    for (const r of result.rules) out.push(`| ${mdCode(r.rule)} | ${mdCode(r.from)} → ${r.action === 'keep' ? '(etcd)' : r.action === 'service' ? '(catalog)' : mdCode(r.to)} | ${r.action}, keys: ${r.keysPolicy}, leases: ${r.leasesPolicy} | ${formatCount(r.copyKeys)} | ${formatBytes(r.copyValueBytes)} | ${formatCount(r.sessions)} | ${formatCount(r.unmappableKeys)} | ${formatCount(r.keptKeys)} | ${r.action === 'service' ? `${formatCount(r.instances)}${r.noInstanceKeys ? ` (${noInstanceText(r.noInstanceKeys)})` : ''}` : ''} |`);
    if (result.unmapped) out.push(`| (unmapped) | | unmapped: ${result.unmapped.policy} | ${formatCount(result.unmapped.keys)} keys outside every rule | ${formatBytes(result.unmapped.valueBytes)} | | | | |`);
    out.push('');
  }
  if (result.datacenters) {
    out.push('## Datacenters', '');
    out.push('Consul\'s KV store is per datacenter: each gets a full copy of the rules copied there, with its own copy progress, checkpoint and verify.', '');
    out.push(...mdDatacenterTable(result.datacenters, (d) => formatSeconds(d.estimateSeconds)));
    const note = unnamedPrimaryNote(result.datacenters);
    if (note) out.push(`${mdText(note.charAt(0).toUpperCase() + note.slice(1))}`, '');
  }
  out.push('## Values, leases and atomic groups', '');
  out.push(`- Value sizes: ${histogramLine(result.values.histogram, bytesShort)}`);
  if (result.values.largest.length) out.push(`- Largest values: ${result.values.largest.slice(0, 5).map((v) => `${mdCode(clipKey(v.key))} (${formatBytes(v.size)})`).join(', ')}`);
  out.push(`- Leases: ${formatCount(result.leases.count)}; granted TTL: ${histogramLine(result.leases.ttl, secondsShort)}; ${result.leases.belowSessionMin} under 10 s and ${result.leases.aboveSessionMax} over 24 h (Consul sessions take 10 s–24 h)`);
  out.push(`- Keys per lease: ${histogramLine(result.leases.keysPerLease)}`);
  const g = result.atomicGroups;
  out.push(`- Atomic groups (keys sharing a revision): ${formatCount(g.multiKey)} multi-key; ${g.overOps64} over 64 ops (Consul < 1.14), ${g.overOps128} over 128 ops (Consul ≥ 1.14), ${g.overBytes} over ${formatBytes(result.limits.txnMaxBytes)}; **${g.splitAtTarget} would not be atomic** at this target`);
  out.push(`- Writes per key (version): ${histogramLine(result.churn.versions)}`);
  if (result.sample) {
    const sm = result.sample;
    out.push(`- Live sample over ${(sm.durationMs / 1000).toFixed(1)} s: ${sm.writesPerSecond} writes/s in ${sm.revisionsPerSecond} revisions/s; busiest: ${sm.prefixes.slice(0, 5).map((p) => `${mdCode(p.prefix)} ${p.writesPerSecond}/s`).join(', ') || 'none'}`);
  }
  out.push('');
  out.push('## Copy estimate', '');
  out.push(`About **${formatSeconds(result.estimate.seconds)}**: ${plural(result.estimate.keys, 'keys')} (${formatBytes(result.estimate.valueBytes)}) through txns, ${formatCount(result.estimate.singlePutKeys)} single PUTs, ${plural(result.estimate.sessions, 'sessions')}${result.estimate.datacenters !== undefined ? `, summed over ${plural(result.estimate.datacenters, 'datacenters')} written one after the other` : ''}.`, '');
  out.push(`Basis: ${mdText(result.estimate.basis.text)}`, '');
  out.push(`_Generated by \`migrate audit\` (report schema ${result.schemaVersion}). Values are never shown._`);
  return `${out.join('\n')}\n`;
}
