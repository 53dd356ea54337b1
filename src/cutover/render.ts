import type { Format } from '../cli/context.js';
import { errorJson, isMigrateError, RefusedError } from '../errors.js';
import { renderEnvelope } from '../report/envelope.js';
import type { CutoverResult } from './cutover.js';
import { formatAge, type PreconditionCheck } from './phase.js';
import type { StatusResult } from './status.js';

function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)];
}

function statusRows(result: StatusResult): string[][] {
  return result.rules.map((r) => [
    r.name,
    r.phase ?? r.action,
    r.owner,
    `${r.keys.etcd ?? 'not readable'}${r.keys.consul === null ? '' : ` / ${r.keys.consul}`}`,
    r.action === 'keep' ? '-' : result.dualRun.lagRevisions === null ? 'none' : `${result.dualRun.lagRevisions} rev${result.dualRun.running ? '' : ' (stopped)'}`,
    r.verify ? `${r.verify.status}${r.verify.differences ? ` (${r.verify.differences})` : ''}, ${formatAge(r.verify.ageSeconds * 1000)} ago` : '-',
    r.lateWrites || r.guardTrips ? `${r.lateWrites} late, ${r.guardTrips} guard` : '-',
    r.next,
  ]);
}

const STATUS_HEADER = ['rule', 'phase', 'owner', 'keys etcd / consul', 'dual-run lag', 'last verify', 'trips', 'next step'];

/** `migrate status` in text, JSON or markdown. */
/** `configFile`: the mapping file as the operator named it, for the line that says it is not the recorded mapping. */
export function renderStatus(result: StatusResult, format: Format, configFile = 'migration.yaml'): string {
  if (format === 'json') return renderEnvelope('status', 'ok', { ...result });
  const dual = result.dualRun;
  const summary = [
    `etcd revision ${result.etcdRevision}`,
    dual.checkpoint === null ? 'no checkpoint' : `checkpoint ${dual.checkpoint} (${dual.by}${dual.running ? `, dual-run running${dual.leader ? `, leader ${dual.leader}` : ''}` : dual.leader ? `, dual-run ${dual.leader} holds the leader lock but writes no checkpoint: re-baselining, or a server does not answer it (its log says which)` : ', no dual-run running'})`,
    result.verify ? `last verify ${!result.verify.clean ? 'drift' : result.verify.tolerated > 0 ? `within budgets (${result.verify.tolerated} difference(s) tolerated by --allow)` : 'clean'} ${formatAge(result.verify.ageSeconds * 1000)} ago` : 'never verified',
  ].join('; ');
  const back = dual.etcdWentBack;
  const changed = [
    ...(result.mappingChanged ? ['', `MAPPING CHANGED: ${configFile} is not the mapping this migration recorded. The figures below are of the file; the dual-run and copy refuse it until started with --accept-mapping-change (review the change with \`migrate plan\` first).`] : []),
    ...(result.sameDataIn.length > 0 ? ['', `NO STATE for migration ${result.migration}, but migration ${result.sameDataIn.map((id) => `"${id}"`).join(', ')} under the same state prefix copies the same etcd prefixes: if ${configFile}'s id was changed since the copy, put it back.`] : []),
    ...(result.cutOverNotInFile.length > 0 ? ['', `CUT OVER, NOT IN ${configFile}: rule${result.cutOverNotInFile.length > 1 ? 's' : ''} ${result.cutOverNotInFile.join(', ')}. Applications write ${result.cutOverNotInFile.length > 1 ? 'their' : 'its'} data to Consul, and a renamed or removed rule is no longer mirrored back to etcd: put ${result.cutOverNotInFile.length > 1 ? 'them' : 'it'} back in the file as cut over (the dual-run and copy refuse the change: mapping_changed_cut_over), or roll ${result.cutOverNotInFile.length > 1 ? 'them' : 'it'} back first with the file as it was.`] : []),
    ...(back ? ['', `ETCD WENT BACK IN TIME: ${back.found ? `a dual-run found etcd's revision ${back.etcdRevision} below the checkpoint ${dual.checkpoint} (${back.found})` : `etcd's revision ${back.etcdRevision} is below the checkpoint ${dual.checkpoint}`} (restored from a backup?). The dual-run refuses to start (etcd_behind_checkpoint); decide which store holds the data to keep: \`migrate copy --delete-extraneous\` makes Consul match etcd and puts the checkpoint back.`] : []),
  ];
  if (format === 'markdown') {
    const md = (cells: string[]) => `| ${cells.map((c) => c.replace(/\|/g, '\\|')).join(' | ')} |`;
    return [`## Migration ${result.migration}`, '', summary, ...changed, '', md(STATUS_HEADER), md(STATUS_HEADER.map(() => '---')), ...statusRows(result).map(md), ''].join('\n');
  }
  return [`Migration ${result.migration} (state ${result.statePrefix}${result.started ? '' : ', nothing recorded yet'})`, summary, ...changed, '', ...table(STATUS_HEADER, statusRows(result)), ''].join('\n');
}

/** `migrate status` with rules in several datacenters: each datacenter's own status, or why it could not be read. */
export function renderStatusDatacenters(migration: string, entries: { datacenter: string; result?: StatusResult; error?: Error }[], format: Format, configFile?: string): string {
  if (format === 'json') {
    return renderEnvelope('status', entries.some((e) => e.error) ? 'error' : 'ok', {
      migration,
      datacenters: entries.map((e) => ({ datacenter: e.datacenter, ...(e.result ? { ...e.result } : {}), ...(e.error ? { error: { code: isMigrateError(e.error) ? e.error.code : 'internal', message: e.error.message } } : {}) })),
    });
  }
  const parts = entries.map((e) => {
    if (e.error) return format === 'markdown' ? `## Datacenter ${e.datacenter}\n\nUnreachable: ${e.error.message.replace(/\|/g, '\\|')}\n` : `Datacenter ${e.datacenter}: UNREACHABLE: ${e.error.message}\n`;
    const body = renderStatus(e.result!, format, configFile);
    return format === 'markdown' ? body.replace(/^## Migration (.*)$/m, `## Migration $1, datacenter ${e.datacenter}`) : `Datacenter ${e.datacenter}:\n${body}`;
  });
  return parts.join('\n');
}

/** Why a refused `cutover`, `rollback` or `finalize` changed nothing: the error of its JSON document, and the one said on stderr. */
export function refusal(result: CutoverResult): RefusedError {
  const failed = [...result.checks.filter((c) => !c.ok).map((c) => c.name), ...result.rules.flatMap((r) => r.checks.filter((c) => !c.ok).map((c) => `${r.rule}: ${c.name}`))];
  return failed.length > 0
    ? new RefusedError('preconditions_failed', `${result.action} refused: ${failed.length} precondition(s) failed (${failed.join(', ')}); nothing was changed.`, { hint: 'Each failed check says what to do; `migrate status` shows every rule\'s next step.', details: { failed } })
    : new RefusedError('not_confirmed', `${result.action} was not confirmed; nothing was changed.`, { hint: 'Run it again and confirm, or pass --yes.' });
}

/** One line per precondition, as the result and the confirmation prompt show them. */
export function checkLines(checks: readonly PreconditionCheck[]): string[] {
  return checks.map((c) => `  ${c.ok ? 'ok  ' : 'FAIL'} ${c.name.padEnd(10)} ${c.detail}`);
}

/**
 * `cutover`, `rollback` and `finalize` results: every precondition, then what was done.
 * `ruleArg` gives a rule as the printed next commands take it (`ruleArgument`).
 */
export function renderCutover(result: CutoverResult, format: Format, ruleArg: (rule: string) => string = (rule) => rule): string {
  if (format === 'json') return renderEnvelope(result.action, result.refused ? 'refused' : 'ok', { ...result, ...(result.refused ? { error: errorJson(refusal(result)) } : {}) });
  const lines: string[] = [`${result.action} of ${result.rules.map((r) => `rule ${r.rule}`).join(', ')} (migration ${result.migration}, etcd revision ${result.etcdRevision}):`];
  lines.push(...checkLines([...result.checks, ...result.rules.flatMap((r) => r.checks.map((c) => ({ ...c, name: `${r.rule}: ${c.name}` })))]));
  // Refused: the checks say why; the error itself goes to stderr, as every error does (the command says it).
  if (result.refused) return `${lines.join('\n')}\n`;
  lines.push('');
  for (const r of result.rules) {
    if (r.rollbackFile) lines.push(`Rollback point of rule ${r.rule}: ${r.rollbackKeys} Consul key(s) in ${r.rollbackFile} (consul kv import format; holds values, mode 0600).`);
    if (r.etcdExportFile) lines.push(`etcd keys of rule ${r.rule} exported to ${r.etcdExportFile} (holds values, mode 0600).`);
    if (r.etcdDeleted !== undefined) lines.push(`Deleted ${r.etcdDeleted} etcd key(s) of rule ${r.rule}.`);
    if (r.etcdDeleteHeldBack) lines.push(`Deleted nothing from etcd for rule ${r.rule}: the dual-run has not confirmed that its reverse mirror stopped (see the warning).`);
    if (r.etcdKeptChanged) lines.push(`Kept ${r.etcdKeptChanged} etcd key(s) of rule ${r.rule} that changed after they were read (the reverse mirror's last writes, or late writes; see the warning).`);
  }
  if (result.snapshotFile) lines.push(`Consul snapshot saved to ${result.snapshotFile}.`);
  for (const doc of result.written) {
    if (result.abandoned) {
      lines.push(`Rule ${doc.rule}: the unfinished ${result.action === 'rollback' ? 'cutover' : 'rollback'} is abandoned; applications write the rule to ${doc.owner === 'etcd' ? 'etcd' : 'Consul'} again (phase ${doc.phase}, owner ${doc.owner}).`);
      continue;
    }
    if (result.acknowledgedOnly) {
      lines.push(doc.phase === 'finalized'
        ? `Rule ${doc.rule}: still finalized (owner consul); its recorded late writes are acknowledged, and verify no longer fails on them. Nothing mirrors the rule any more: the late values stay in etcd.`
        : `Rule ${doc.rule}: still cut over (owner ${doc.owner}); its recorded trips are acknowledged, and verify no longer fails on them. The late values stay in etcd until the reverse mirror writes Consul's back (it compares every key when the dual-run starts): until then \`migrate verify\` lists them as value differences.`);
      continue;
    }
    const next = doc.phase === 'cutover'
      ? `applications now write rule ${doc.rule} to Consul; the dual-run mirrors it back to etcd. Next: switch the writers, then \`migrate finalize --rule ${ruleArg(doc.rule)}\` (or \`migrate rollback --rule ${ruleArg(doc.rule)}\`).`
      : doc.phase === 'rolledback'
        ? `applications write rule ${doc.rule} to etcd again; the dual-run replicates it to Consul.`
        : `rule ${doc.rule} is no longer mirrored in either direction.`;
    lines.push(`Rule ${doc.rule}: phase ${doc.phase}, owner ${doc.owner}; ${next}`);
  }
  return `${lines.join('\n')}\n`;
}
