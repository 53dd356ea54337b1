import type { Format } from '../cli/context.js';
import { errorDocs, isMigrateError } from '../errors.js';
import { formatCount } from '../report/count.js';
import { renderEnvelope } from '../report/envelope.js';
import { clipKey } from '../report/keys.js';
import { DIFFERENCE_KINDS, type Difference, type DifferenceKind, type RuleStatus, type ValueDigest } from './compare.js';
import type { RuleVerify, VerifyCut, VerifyResult } from './verify.js';

/**
 * Renderings of a verify result: text (people), JSON (one envelope, schema in
 * `report-schema.ts`), JUnit XML (CI test reports: one testcase per rule) and
 * markdown (a pull-request comment or `$GITHUB_STEP_SUMMARY`). Every format
 * states the same count of persistent differences and lists the same
 * records; when `--max-diffs` cut the list, each says so with both numbers.
 * Values never appear: sizes and keyed hashes only. A service rule's counts
 * are instances (the ones its keys make, the ones in the catalog), and each
 * format says so.
 */
export function renderVerify(result: VerifyResult, format: Format): string {
  switch (format) {
    case 'json':
      return renderEnvelope('verify', result.clean ? 'ok' : 'drift', { ...result });
    case 'junit':
      return renderJunit(result);
    case 'markdown':
      return renderMarkdown(result);
    default:
      return renderText(result);
  }
}

/**
 * The CI artifact for a verify that could not finish (no consistent cut, a
 * server error): JUnit and markdown still get a document, so the report step
 * shows the error instead of failing on an empty file. Text and JSON errors
 * are printed by the CLI entry.
 */
export function renderVerifyError(err: unknown, format: Format, migration: string): string | undefined {
  const code = isMigrateError(err) ? err.code : 'internal_error';
  const message = err instanceof Error ? err.message : String(err);
  const hint = isMigrateError(err) ? err.hint : undefined;
  if (format === 'junit') {
    return `${XML_HEADER}<testsuites name="migrate verify" tests="1" failures="0" errors="1">
  <testsuite name="${xml(`migrate verify ${migration}`)}" tests="1" failures="0" errors="1" skipped="0">
    <testcase classname="${xml(`migrate.verify.${migration}`)}" name="consistent cut">
      <error type="${xml(code)}" message="${xml(message)}">${xml(`${message}${hint ? `\nnext: ${hint}` : ''}\nsee: ${errorDocs(code)}`)}</error>
    </testcase>
  </testsuite>
</testsuites>
`;
  }
  if (format === 'markdown') {
    return `## migrate verify: ⚠️ could not verify\n\nMigration ${mdCode(migration)}: \`error[${code}]\` ${mdText(message)}${hint ? `\n\nNext: ${mdText(hint)}` : ''}\n\nSee ${mdCode(errorDocs(code))} in the migrate package.\n`;
  }
  return undefined;
}

function plural(n: number, word: string, many = `${word}s`): string {
  return `${formatCount(n)} ${n === 1 ? word : many}`;
}

/** Why the cut was taken as it was (the cut kind itself is printed beside it). */
function describeCut(cut: VerifyCut): string {
  switch (cut.reason) {
    case 'dualrun-running':
      return `the dual-run had applied etcd up to revision ${cut.checkpoint} when Consul was read (waited ${(cut.waitedMs / 1000).toFixed(1)} s)`;
    case 'copy-checkpoint':
      return `no dual-run is running (the checkpoint at revision ${cut.checkpoint} was written by copy), so every change since the copy is drift`;
    case 'dualrun-stopped':
      return `no dual-run is replicating (its checkpoint at revision ${cut.checkpoint} no longer moves), so every change since is drift`;
    default:
      return 'no checkpoint in Consul (no copy or dual-run has recorded one), so nothing replicates';
  }
}

function digestText(d: ValueDigest | null): string {
  return d ? `${d.size} B #${d.hash}` : '—';
}

function kindCounts(byKind: Record<DifferenceKind, number>): string {
  return DIFFERENCE_KINDS.filter((k) => byKind[k] > 0).map((k) => `${k} ${byKind[k]}`).join(', ');
}

function unmappableText(r: RuleVerify): string {
  return Object.entries(r.unmappable).map(([reason, n]) => `${n} ${reason}`).join(', ');
}

/** What the unmappable count of a rule means: keys the rule rejects, or keys that make no service instance. */
function unmappableNote(r: RuleVerify): string {
  return r.action === 'service'
    ? `${unmappableText(r)} source key(s) that make no service instance; not registered by design, not drift`
    : `${unmappableText(r)} source key(s) ${Object.keys(r.unmappable).every((reason) => reason === 'value-too-large') ? 'with values over Consul\'s limit (kv_max_value_size)' : `the rule rejects (${rejectedBy(r)})`}; not copied by design, not drift`;
}

/** What made a copy rule's keys unmappable, in the words of its reasons. */
function rejectedBy(r: RuleVerify): string {
  const reasons = Object.keys(r.unmappable);
  const byName = reasons.filter((reason) => reason !== 'value-too-large' && reason !== 'key-charset').length > 0 ? [`keys: ${r.keys}`] : [];
  if (reasons.includes('key-charset')) byName.push('keys the Consul agent refuses: Consul 1.21.5\'s key rule');
  if (reasons.includes('value-too-large')) byName.push('values over Consul\'s limit');
  return byName.join(', or ');
}

/** A service rule's scope in one phrase. */
function serviceScope(r: RuleVerify): string {
  return `service rule: ${plural(r.compared, 'instance')} its etcd keys make, ${plural(r.targetKeys, 'instance')} of it in Consul's catalog`;
}

function unmappableCount(r: RuleVerify): number {
  return Object.values(r.unmappable).reduce<number>((n, v) => n + (v ?? 0), 0);
}

function statusWord(status: RuleStatus): string {
  return status === 'parity' ? 'parity' : status === 'within-budget' ? 'within budget' : 'DRIFT';
}

/** "3 persistent differences", plus how many are listed when `--max-diffs` cut the list. */
function countLine(result: VerifyResult): string {
  const total = result.differencesTotal;
  if (total === 0) return 'no persistent differences';
  if (!result.truncated) return `${plural(total, 'persistent difference')}, all listed`;
  return `${plural(total, 'persistent difference')}; ${formatCount(result.differences.length)} listed, ${formatCount(total - result.differences.length)} not listed (--max-diffs ${result.maxDiffs}${result.rules.some((r) => r.unchecked > 0) ? ', and the re-check limit' : ''})`;
}

function verdictLine(result: VerifyResult): string {
  const drifting = result.rules.filter((r) => r.status === 'drift');
  if (result.clean) {
    const within = result.rules.filter((r) => r.status === 'within-budget');
    return within.length === 0
      ? `PARITY: etcd and Consul agree for every copy${result.rules.some((r) => r.action === 'service') ? ' and service' : ''} rule (exit 0).`
      : `PARITY WITHIN BUDGET: ${plural(result.totals.withinBudget, 'difference')} tolerated by --allow in ${within.map((r) => r.name).join(', ')} (exit 0).`;
  }
  const late = result.rules.reduce((n, r) => n + r.lateWrites, 0);
  const drift = drifting.reduce((n, r) => n + r.differences, 0);
  // The two counts add up to every difference the report lists.
  const within = result.rules.filter((r) => r.status === 'within-budget');
  const tolerated = within.length > 0 ? `; ${plural(result.totals.withinBudget, 'more difference')} within the --allow budgets of ${within.map((r) => r.name).join(', ')}` : '';
  return `DRIFT: ${plural(drift, 'persistent difference')}${late ? ` and ${plural(late, 'late write')}` : ''} in ${plural(drifting.length, 'rule')} (${drifting.map((r) => r.name).join(', ')})${tolerated} (exit 1).`;
}

/**
 * What mends the drift of rules etcd still owns. The dual-run replicates etcd's
 * changes: a key changed in Consul by hand (or a lost session) stays so until
 * the key next changes in etcd, and a copy rewrites it, but not while the
 * dual-run runs (copy_dualrun_running). Late writes have their own warning.
 */
function nextAfterDrift(result: VerifyResult): string | undefined {
  const drifting = result.rules.filter((r) => r.status === 'drift' && r.owner === 'etcd' && r.differences > 0);
  if (drifting.length === 0) return undefined;
  const names = new Set(drifting.map((r) => r.name));
  const listed = result.differences.filter((d) => names.has(d.rule));
  // A session lost in Consul is the dual-run's to mend: its lease pass makes the session again and writes its keys.
  if (listed.length > 0 && listed.length === drifting.reduce((n, r) => n + r.differences, 0) && listed.every((d) => d.reason === 'session-gone')) {
    return 'a running dual-run makes a lost session again and writes its keys at its next check of the lease (within about a minute): verify again then; with no dual-run running, start `migrate dualrun`.';
  }
  if (listed.length > 0 && listed.length === drifting.reduce((n, r) => n + r.differences, 0) && listed.every((d) => d.kind === 'not-servable')) {
    return 'Consul holds these keys but GET /v1/kv/<key> does not serve them, and no copy mends a key\'s name: where the agent answers "invalid key name" (Consul 1.21.5), upgrade the agents to 1.21.6 or later; otherwise delete the keys in Consul (a txn `delete` reaches them) and map their etcd keys to servable ones (`keys: escape`).';
  }
  const held = result.differences.some((d) => d.reason === 'foreign-session') ? ' Keys held by a session this migration does not own (foreign-session) are left alone by copy: their holder releases them first.' : '';
  const lostSession = listed.some((d) => d.reason === 'session-gone') ? ' Keys whose session is gone (session-gone) need no copy: a running dual-run makes the session again and writes them at its next check of the lease (within about a minute).' : '';
  const copy = `with the dual-run stopped, run \`migrate copy\` (it rewrites what differs and creates what is missing; extra keys go only with --delete-extraneous), start the dual-run again (it resumes from its checkpoint), then verify.${held}${lostSession}`;
  // A dual-run that is stopped has etcd's changes since its checkpoint still to apply: most of this drift, which it mends.
  if (result.cut.cut === 'immediate' && result.cut.reason === 'dualrun-stopped') {
    return `no dual-run replicated during this verify, so etcd's changes since its checkpoint count as drift: start \`migrate dualrun\` (it resumes from its checkpoint and applies them), then verify again. For what still differs then: ${copy}`;
  }
  // One round tells no write in flight from drift: a later round would have read the differing keys again.
  if (result.cut.cut === 'checkpoint' && result.rounds.length === 1) {
    return `verify ran one round (--rounds 1) while a dual-run replicated: a key it was still writing counts as a difference too. Verify again with more rounds (the default is 3) to tell writes in flight from drift; for what persists: ${copy}`;
  }
  return `these keys stay as they are in Consul until they next change in etcd (the dual-run replicates etcd's changes only). To write etcd's values again: ${copy}`;
}

function renderText(result: VerifyResult): string {
  const lines: string[] = [];
  lines.push(`Verify of migration "${result.migration}" at etcd revision ${result.cut.revision}`);
  lines.push(`  cut: ${result.cut.cut} — ${describeCut(result.cut)}`);
  const services = result.rules.some((r) => r.action === 'service');
  for (const r of result.rounds) {
    lines.push(r.round === 1
      ? `  round 1: ${services ? plural(r.checked, 'key or service instance', 'keys and service instances') : plural(r.checked, 'key')} compared, ${formatCount(r.differences)} differ`
      : `  round ${r.round} (revision ${r.revision}, cut ${r.cut}): ${formatCount(r.checked)} re-checked, ${formatCount(r.differences)} still differ, ${formatCount(r.settled)} settled`);
  }
  lines.push('');
  lines.push(`${'rule'.padEnd(18)} ${'status'.padEnd(13)} ${'etcd'.padStart(9)} ${'compared'.padStart(9)} ${'consul'.padStart(9)} ${'diffs'.padStart(7)} ${'settled'.padStart(7)} ${'unmappable'.padStart(10)}`);
  for (const r of result.rules) {
    lines.push(`${r.name.padEnd(18)} ${statusWord(r.status).padEnd(13)} ${formatCount(r.sourceKeys).padStart(9)} ${formatCount(r.compared).padStart(9)} ${formatCount(r.targetKeys).padStart(9)} ${formatCount(r.differences).padStart(7)} ${formatCount(r.settled).padStart(7)} ${formatCount(unmappableCount(r)).padStart(10)}`);
  }
  lines.push('');
  for (const r of result.rules) {
    if (r.action === 'service') lines.push(`  ${r.name}: ${serviceScope(r)}`);
    if (r.differences > 0) lines.push(`  ${r.name}: ${kindCounts(r.byKind)}${r.budget !== null ? ` (--allow ${r.name}=${r.budget})` : ''}${r.unchecked ? `; ${r.unchecked} over the re-check limit, counted without re-check` : ''}`);
    if (unmappableCount(r) > 0) lines.push(`  ${r.name}: ${unmappableNote(r)}`);
    if (r.leaseSkipped > 0) lines.push(`  ${r.name}: ${r.leaseSkipped} leased key(s) under leases: skip, expected absent from Consul (any found there is listed as extra, lease-skip)`);
    if (r.readBack.failed > 0) lines.push(`  ${r.name}: ${r.readBack.failed} of ${r.readBack.checked} key(s) read back through GET /v1/kv failed`);
    if (r.owner === 'consul') lines.push(`  ${r.name}: cut over: Consul is the owner, etcd the mirror${r.appLocks.keys > 0 ? `; ${r.appLocks.keys} key(s) locked by an application's own session in Consul, mirrored to etcd without a lease` : ''}`);
    if (r.lateWrites > 0) lines.push(`  ${r.name}: ${r.lateWrites} late write(s) to etcd recorded by the dual-run after the cutover: drift until acknowledged`);
  }
  lines.push(`Differences: ${countLine(result)}.`);
  if (result.differences.length > 0) {
    const width = Math.min(60, Math.max(...result.differences.map((d) => d.key.length)));
    for (const d of result.differences) {
      lines.push(`  ${d.rule.padEnd(12)} ${d.kind.padEnd(14)} ${clipKey(d.key).padEnd(width)}  etcd ${digestText(d.etcd)}  consul ${digestText(d.consul)}  ${d.reason}: ${d.detail}`);
    }
  }
  for (const w of result.warnings) lines.push(`warning: ${w}`);
  lines.push('');
  lines.push(`Result: ${verdictLine(result)}`);
  const next = nextAfterDrift(result);
  if (next) lines.push(`Next: ${next}`);
  lines.push(result.recorded ? `Recorded the summary in Consul (verify/last of migration "${result.migration}").` : `Not recorded (${result.notRecorded === 'no-record' ? '--no-record' : 'see the warning above'}).`);
  return `${lines.join('\n')}\n`;
}

const XML_HEADER = '<?xml version="1.0" encoding="UTF-8"?>\n';
// Characters XML 1.0 cannot carry at all, even escaped.
const XML_INVALID = /[^\t\n\r\x20-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/gu;

/** Text for an XML attribute or element. */
export function xml(text: string): string {
  return text.replace(XML_INVALID, '\uFFFD').replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

function differenceLine(d: Difference): string {
  return `${d.kind} ${clipKey(d.key)}${d.datacenter ? ` in datacenter ${d.datacenter}` : ''} (${d.reason}): ${d.detail}; etcd ${digestText(d.etcd)}, consul ${digestText(d.consul)}`;
}

function renderJunit(result: VerifyResult): string {
  const suite = junitSuite(result);
  const out: string[] = [XML_HEADER.trimEnd()];
  out.push(`<testsuites name="migrate verify" tests="${suite.tests}" failures="${suite.failures}" errors="0" time="${suite.seconds}">`);
  out.push(...suite.lines);
  out.push('</testsuites>');
  return `${out.join('\n')}\n`;
}

/** One `<testsuite>`: a testcase per rule; with `datacenter`, the suite, its test cases and every difference name it. */
function junitSuite(result: VerifyResult, datacenter?: string): { lines: string[]; tests: number; failures: number; seconds: string } {
  const seconds = (result.durationMs / 1000).toFixed(3);
  const failures = result.rules.filter((r) => r.status === 'drift').length;
  const suite = `migrate verify ${result.migration}${datacenter ? ` (datacenter ${datacenter})` : ''}`;
  const classname = `migrate.verify.${result.migration}${datacenter ? `.${datacenter}` : ''}`;
  const properties = [
    ...(datacenter ? [['datacenter', datacenter]] : []),
    ['cut', result.cut.cut],
    ['cut.reason', result.cut.reason],
    ['revision', String(result.cut.revision)],
    ['checkpoint', result.cut.checkpoint === null ? '' : String(result.cut.checkpoint)],
    ['rounds', String(result.rounds.length)],
    ['differences', String(result.differencesTotal)],
    ['differences.listed', String(result.differences.length)],
    ['settled', String(result.totals.settled)],
  ];
  const out: string[] = [];
  out.push(`  <testsuite name="${xml(suite)}" tests="${result.rules.length}" failures="${failures}" errors="0" skipped="0" time="${seconds}">`);
  out.push('    <properties>');
  for (const [name, value] of properties) out.push(`      <property name="${xml(name!)}" value="${xml(value!)}"/>`);
  out.push('    </properties>');
  for (const r of result.rules) {
    out.push(`    <testcase classname="${xml(classname)}" name="${xml(r.name)}" time="0">`);
    const listed = result.differences.filter((d) => d.rule === r.name);
    const body = [
      r.action === 'service'
        ? `service rule ${r.name}: ${r.from} -> Consul's catalog; ${plural(r.compared, 'instance')} compared, ${plural(r.targetKeys, 'catalog instance')}, ${r.settled} settled`
        : `rule ${r.name}: ${r.from} -> ${r.to}${datacenter ? ` in datacenter ${datacenter}` : ''}; ${plural(r.compared, 'key')} compared, ${plural(r.targetKeys, 'Consul key')}, ${r.settled} settled`,
      ...(unmappableCount(r) > 0 ? [`not drift: ${r.action === 'service' ? `${unmappableText(r)} source key(s) that make no service instance` : `${unmappableText(r)} source key(s) rejected by the rule`}`] : []),
      ...listed.map(differenceLine),
      ...(listed.length < r.differences ? [`... ${r.differences - listed.length} more not listed (--max-diffs ${result.maxDiffs})`] : []),
    ].join('\n');
    if (r.status === 'drift') {
      out.push(`      <failure type="drift" message="${xml(`${plural(r.differences, 'persistent difference')} (${kindCounts(r.byKind)})${datacenter ? ` in datacenter ${datacenter}` : ''}`)}">${xml(body)}</failure>`);
    } else {
      const note = r.status === 'within-budget' ? `within budget: ${r.differences} of ${r.budget} allowed by --allow ${r.name}=${r.budget}\n` : '';
      out.push(`      <system-out>${xml(`${note}${body}`)}</system-out>`);
    }
    out.push('    </testcase>');
  }
  out.push(`    <system-out>${xml(`${countLine(result)}\n${verdictLine(result)}`)}</system-out>`);
  out.push('  </testsuite>');
  return { lines: out, tests: result.rules.length, failures, seconds };
}

/** What verify found in one datacenter of a migration that writes to several: its result, or why it could not verify it. */
export interface DatacenterVerify {
  datacenter: string;
  result?: VerifyResult;
  error?: unknown;
}

/** Drift anywhere → drift (exit 1); else a datacenter not verified → unverified (exit 3); else ok. */
export function datacentersVerdict(entries: readonly DatacenterVerify[]): 'ok' | 'drift' | 'unverified' {
  if (entries.some((e) => e.result && !e.result.clean)) return 'drift';
  return entries.some((e) => !e.result) ? 'unverified' : 'ok';
}

function errorOf(err: unknown): { code: string; message: string; hint?: string } {
  return { code: isMigrateError(err) ? err.code : 'internal_error', message: err instanceof Error ? err.message : String(err), ...(isMigrateError(err) && err.hint ? { hint: err.hint } : {}) };
}

function datacenterStatus(e: DatacenterVerify): 'parity' | 'drift' | 'unverified' {
  return !e.result ? 'unverified' : e.result.clean ? 'parity' : 'drift';
}

function datacentersVerdictLine(entries: readonly DatacenterVerify[]): string {
  const verdict = datacentersVerdict(entries);
  const names = (status: string) => entries.filter((e) => datacenterStatus(e) === status).map((e) => e.datacenter).join(', ');
  if (verdict === 'ok') return `PARITY in every datacenter (${names('parity')}) (exit 0).`;
  const unverified = names('unverified');
  if (verdict === 'drift') return `DRIFT in datacenter ${names('drift')}${unverified ? `; not verified: ${unverified}` : ''} (exit 1).`;
  return `NOT VERIFIED: datacenter ${unverified} could not be verified; ${names('parity') ? `parity in ${names('parity')}` : 'no datacenter verified'} (exit 3).`;
}

/**
 * A verify over several datacenters (issue 11): every format has one part per
 * datacenter, the same as a single-datacenter report, each difference naming
 * its datacenter; a datacenter that could not be verified says why and is
 * never counted as parity.
 */
export function renderVerifyDatacenters(migration: string, entries: readonly DatacenterVerify[], format: Format): string {
  const verdict = datacentersVerdict(entries);
  switch (format) {
    case 'json':
      return renderEnvelope('verify', verdict, {
        migration,
        clean: verdict === 'ok',
        datacenters: entries.map((e) => ({ datacenter: e.datacenter, status: datacenterStatus(e), report: e.result ? { ...e.result } : null, error: e.result ? null : errorOf(e.error) })),
      });
    case 'junit': {
      const suites = entries.map((e) => {
        if (e.result) return junitSuite(e.result, e.datacenter);
        const { code, message, hint } = errorOf(e.error);
        return {
          tests: 1, failures: 0, seconds: '0.000', error: true,
          lines: [
            `  <testsuite name="${xml(`migrate verify ${migration} (datacenter ${e.datacenter})`)}" tests="1" failures="0" errors="1" skipped="0">`,
            `    <testcase classname="${xml(`migrate.verify.${migration}.${e.datacenter}`)}" name="datacenter ${xml(e.datacenter)}">`,
            `      <error type="${xml(code)}" message="${xml(`datacenter ${e.datacenter} not verified: ${message}`)}">${xml(`${message}${hint ? `\nnext: ${hint}` : ''}\nsee: ${errorDocs(code)}`)}</error>`,
            '    </testcase>',
            '  </testsuite>',
          ],
        };
      });
      const tests = suites.reduce((n, s) => n + s.tests, 0);
      const failures = suites.reduce((n, s) => n + s.failures, 0);
      const errors = suites.filter((s) => 'error' in s).length;
      return `${[XML_HEADER.trimEnd(), `<testsuites name="migrate verify" tests="${tests}" failures="${failures}" errors="${errors}">`, ...suites.flatMap((s) => s.lines), '</testsuites>'].join('\n')}\n`;
    }
    case 'markdown': {
      const parts = entries.map((e) => {
        if (e.result) return renderMarkdown(e.result).replace(/^## migrate verify:/, `## migrate verify, datacenter ${mdCode(e.datacenter)}:`);
        const { code, message, hint } = errorOf(e.error);
        return `## migrate verify, datacenter ${mdCode(e.datacenter)}: ⚠️ not verified\n\n\`error[${code}]\` ${mdText(message)}${hint ? `\n\nNext: ${mdText(hint)}` : ''}\n`;
      });
      return `${parts.join('\n')}\n${mdText(datacentersVerdictLine(entries))}\n`;
    }
    default: {
      const parts = entries.map((e) => {
        if (e.result) return `Datacenter ${e.datacenter}:\n${renderText(e.result)}`;
        const { code, message, hint } = errorOf(e.error);
        return `Datacenter ${e.datacenter}: NOT VERIFIED: error[${code}] ${message}${hint ? `\n  next: ${hint}` : ''}\n`;
      });
      return `${parts.join('\n')}\nResult: ${datacentersVerdictLine(entries)}\n`;
    }
  }
}

/** Inline code for markdown, safe inside tables. */
function mdCode(text: string): string {
  const escaped = text.replace(/\|/g, '\\|');
  return escaped.includes('`') ? `\`\` ${escaped} \`\`` : `\`${escaped}\``;
}

function mdText(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/([*_<>[\]`])/g, '\\$1');
}

function renderMarkdown(result: VerifyResult): string {
  const icon = result.clean ? '✅' : '❌';
  const title = result.clean ? (result.totals.withinBudget > 0 ? 'parity within budget' : 'parity') : 'drift';
  const lines: string[] = [];
  lines.push(`## migrate verify: ${icon} ${title}`);
  lines.push('');
  lines.push(`Migration ${mdCode(result.migration)} at etcd revision ${result.cut.revision}; cut **${result.cut.cut}** — ${mdText(describeCut(result.cut))}. ${plural(result.rounds.length, 'round')}, ${plural(result.totals.settled, 'difference')} settled (writes in flight).`);
  lines.push('');
  lines.push('| Rule | Status | etcd keys | Compared | Consul keys | Differences | Settled | Unmappable |');
  lines.push('|---|---|---:|---:|---:|---:|---:|---:|');
  for (const r of result.rules) {
    const status = r.status === 'parity' ? '✅ parity' : r.status === 'within-budget' ? `☑️ within budget (${r.differences}/${r.budget})` : '❌ drift';
    lines.push(`| ${mdCode(r.name)}${r.action === 'service' ? ' (service)' : ''} | ${status} | ${formatCount(r.sourceKeys)} | ${formatCount(r.compared)} | ${formatCount(r.targetKeys)} | ${formatCount(r.differences)}${r.differences ? ` (${kindCounts(r.byKind)})` : ''} | ${formatCount(r.settled)} | ${unmappableCount(r) ? `${formatCount(unmappableCount(r))} (${mdText(unmappableText(r))})` : 0} |`);
  }
  if (result.rules.some((r) => r.action === 'service')) {
    lines.push('');
    lines.push('Service rules count instances: _Compared_ the instances their etcd keys make, _Consul keys_ their instances in the catalog, _Unmappable_ keys that make no instance.');
  }
  lines.push('');
  lines.push(`**${mdText(countLine(result)[0]!.toUpperCase() + countLine(result).slice(1))}.**`);
  if (result.differences.length > 0) {
    lines.push('');
    lines.push(`<details><summary>${result.differences.length === result.differencesTotal ? `All ${result.differencesTotal}` : `${result.differences.length} of ${result.differencesTotal}`} differences (sizes and keyed hashes, never values)</summary>`);
    lines.push('');
    lines.push('| Rule | Key | Kind | Reason | etcd | Consul |');
    lines.push('|---|---|---|---|---|---|');
    for (const d of result.differences) {
      lines.push(`| ${mdCode(d.rule)} | ${mdCode(clipKey(d.key))} | ${d.kind} | ${mdText(d.reason)} | ${digestText(d.etcd)} | ${digestText(d.consul)} |`);
    }
    lines.push('');
    lines.push('</details>');
  }
  for (const w of result.warnings) lines.push('', `> ⚠️ ${mdText(w)}`);
  lines.push('');
  lines.push(mdText(verdictLine(result)));
  return `${lines.join('\n')}\n`;
}
