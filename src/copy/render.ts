import type { Format } from '../cli/context.js';
import { renderEnvelope } from '../report/envelope.js';
import { isMigrateError } from '../errors.js';
import { clipKey, formatKey } from '../report/keys.js';
import type { CopyResult } from './copy.js';

function sum(record: Partial<Record<string, number>>): number {
  return Object.values(record).reduce<number>((n, v) => n + (v ?? 0), 0);
}

/** Txn verbs that carry a value. */
const VALUE_VERBS = new Set(['set', 'cas', 'lock', 'unlock']);

/** Renders a copy or dry-run result; never a value, only keys and sizes. */
export function renderCopy(result: CopyResult, format: Format, showOps: boolean): string {
  if (format === 'json') {
    return renderEnvelope('copy', result.interrupted ? 'interrupted' : 'ok', { ...result, ops: result.ops ?? null });
  }
  const lines: string[] = [];
  const verb = result.dryRun ? 'would' : '';
  lines.push(`${result.dryRun ? 'Dry run: nothing was written. ' : ''}Copy of migration "${result.migration}" at etcd revision ${result.revision}${result.resumedFrom !== undefined ? ` (resumed; the interrupted copy pinned ${result.resumedFrom})` : ''}${result.compactedAt ? ` (etcd compacted ${result.compactedAt.join(', ')} while the copy read ${result.compactedAt.length > 1 ? 'them' : 'it'}; copied again at ${result.revision})` : ''}${result.interrupted ? ' — INTERRUPTED, progress recorded; run again with --resume' : ''}`);
  lines.push('');
  lines.push(`${'rule'.padEnd(18)} ${'source'.padStart(8)} ${'create'.padStart(8)} ${'update'.padStart(8)} ${'same'.padStart(8)} ${'skipped'.padStart(8)} ${'extra'.padStart(7)} ${'MiB'.padStart(7)}`);
  for (const r of result.rules) {
    lines.push(`${r.name.padEnd(18)} ${String(r.sourceKeys).padStart(8)} ${String(r.created).padStart(8)} ${String(r.updated).padStart(8)} ${String(r.unchanged).padStart(8)} ${String(sum(r.skipped)).padStart(8)} ${String(r.extraneous).padStart(7)} ${(r.bytesWritten / 1048576).toFixed(2).padStart(7)}`);
  }
  lines.push('');
  for (const o of result.ownedByConsul) lines.push(`  ${o.rule}: not copied: ${o.phase === 'finalized' ? 'finalized' : 'cut over'}, Consul owns its data`);
  for (const r of result.rules) {
    // Each reason with its own examples under it.
    for (const [reason, count] of Object.entries(r.skipped)) {
      lines.push(`  ${r.name}: ${count} key(s) ${verb ? 'would be ' : ''}skipped: ${reason}`);
      const examples = r.skippedExamples.filter((ex) => ex.reason === reason);
      for (const ex of examples.slice(0, 5)) lines.push(`      ${clipKey(ex.key)}  (${ex.reason}: ${ex.detail})`);
      const shown = Math.min(5, examples.length);
      if (count > shown && examples.length > 0) lines.push(`      … and ${count - shown} more (${jsonLists(examples.length, count)})`);
    }
    if (r.extraneous > 0) {
      const removed = r.deleted || r.extraneousHeld ? `; ${r.deleted} ${verb ? 'would be ' : ''}deleted${r.extraneousHeld ? `, ${r.extraneousHeld} kept: held by a session this migration does not own` : ''}` : ' (kept; pass --delete-extraneous to remove them)';
      lines.push(`  ${r.name}: ${r.extraneous} extraneous key(s) under ${r.to} have no etcd key${removed}`);
      for (const key of r.extraneousExamples.slice(0, 5)) lines.push(`      ${clipKey(formatKey(key))}`);
      if (r.extraneous > Math.min(5, r.extraneousExamples.length) && r.extraneousExamples.length > 0) lines.push(`      … and ${r.extraneous - Math.min(5, r.extraneousExamples.length)} more (${jsonLists(r.extraneousExamples.length, r.extraneous)})`);
    }
    if (r.resumedBelow) lines.push(`  ${r.name}: ${r.resumedBelow} key(s) below the interrupted copy's low-water mark: done by it, not planned again (not in the row above)`);
    if (r.deletedStale) lines.push(`  ${r.name}: ${r.deletedStale} key(s) this copy wrote at a compacted revision ${verb ? 'would be ' : 'were '}deleted: etcd deleted them before revision ${result.revision}`);
    if (r.conflicts.overwritten || r.conflicts.skipped) lines.push(`  ${r.name}: ${r.conflicts.overwritten} conflict(s) overwritten, ${r.conflicts.skipped} skipped (keys changed in Consul after planning)`);
    if (r.singlePuts) lines.push(`  ${r.name}: ${r.singlePuts} value(s) too large for a txn ${verb ? 'would go' : 'went'} by single PUT`);
  }
  for (const r of result.services) {
    lines.push(`  service rule ${r.name} (${r.from}): ${r.sourceKeys} key(s); ${r.registered} instance(s) ${verb ? 'would be ' : ''}registered, ${r.updated} updated, ${r.unchanged} unchanged${r.withoutLease ? `; ${r.withoutLease} without a lease ${verb ? 'would be ' : 'were '}registered without a TTL check` : ''}`);
    for (const [problem, count] of Object.entries(r.problems)) lines.push(`  ${r.name}: ${count} key(s) make no instance: ${problem}`);
    if (r.withdrawn) lines.push(`  ${r.name}: ${r.withdrawn} instance(s) whose key no longer describes one ${verb ? 'would be ' : 'were '}deregistered`);
    for (const ex of r.problemExamples.slice(0, 5)) lines.push(`      ${clipKey(ex.key)}  (${ex.problem}: ${ex.detail})`);
    if (r.extraneous > 0) {
      lines.push(`  ${r.name}: ${r.extraneous} instance(s) on the agent have no etcd key${r.deregistered ? `; ${r.deregistered} deregistered` : ' (kept; pass --delete-extraneous to deregister them)'}`);
      for (const id of r.extraneousExamples.slice(0, 5)) lines.push(`      ${formatKey(id)}`);
    }
  }
  if (result.services.some((r) => r.registered + r.updated + r.unchanged > r.withoutLease) && !result.dryRun) {
    lines.push('  leased instances have TTL checks: they turn critical within the TTL unless `migrate dualrun` keeps them passing');
  }
  const s = result.sessions;
  if (s.created || s.adopted) {
    lines.push(`  sessions: ${s.created} ${result.dryRun ? 'to create' : 'created'}, ${s.adopted} adopted (one per etcd lease; Behavior delete, LockDelay 0s)`);
    lines.push(`  session-held keys: Consul deletes them 1 to 2 × their session's TTL after the copy ends, unless \`migrate dualrun\` renews the sessions`);
  }
  for (const c of s.clamps.slice(0, 10)) lines.push(`  lease ${c.leaseId}: TTL ${c.etcdTtl}s ${c.clamped} to ${c.sessionTtl}s (Consul sessions live 10s–24h)`);
  if (!result.dryRun) lines.push(`  ${result.txns} txn(s), ${result.retries} retr${result.retries === 1 ? 'y' : 'ies'}, ${(result.durationMs / 1000).toFixed(1)}s`);
  if (showOps && result.ops) {
    lines.push('', result.ops.length > 0 ? 'Operations:' : 'Operations: none');
    for (const op of result.ops) {
      // A value's size even when it is empty (0 B); none for a delete or a check.
      if (op.op === 'txn') lines.push(`  txn (${op.ops!.length} ops)`, ...op.ops!.map((o) => `    ${o.verb.padEnd(16)} ${clipKey(o.key)}${VALUE_VERBS.has(o.verb) ? `  ${o.bytes} B` : ''}${o.session ? `  session ${o.session}` : ''}`));
      else if (op.op === 'put') lines.push(`  put              ${clipKey(op.key!)}  ${op.bytes} B${op.session ? `  acquire ${op.session}` : ''}${op.release ? `  release ${op.release}` : ''}`);
      else if (op.op === 'create-session') lines.push(`  create-session   ${op.session}  TTL ${op.ttlSeconds}s`);
      else if (op.op === 'register-service') lines.push(`  register-service ${op.service}  (${op.name})${op.ttlSeconds ? `  TTL check ${op.ttlSeconds}s` : ''}`);
      else if (op.op === 'deregister-service' || op.op === 'update-check') lines.push(`  ${op.op.padEnd(16)} ${op.service}`);
      else lines.push(`  ${op.op.padEnd(16)} ${op.key === undefined ? op.session : clipKey(op.key)}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

/** What a copy did in one datacenter (issue 11): its result, or why it did not run there. */
export interface DatacenterCopy {
  datacenter: string;
  result?: CopyResult;
  error?: Error;
}

/** Renders a copy into several datacenters: one section (text) or one entry (JSON) per datacenter. */
export function renderCopyDatacenters(copies: DatacenterCopy[], format: Format, showOps: boolean): string {
  const failed = copies.filter((c) => c.error);
  const interrupted = copies.some((c) => c.result?.interrupted);
  if (format === 'json') {
    return renderEnvelope('copy', failed.length ? 'error' : interrupted ? 'interrupted' : 'ok', {
      datacenters: copies.map((c) => ({
        datacenter: c.datacenter,
        ...(c.result ? { ...c.result, ops: c.result.ops ?? null } : {}),
        ...(c.error ? { error: { code: isMigrateError(c.error) ? c.error.code : 'internal', message: c.error.message } } : {}),
      })),
    });
  }
  const sections = copies.map((c) => {
    if (c.error) return `Datacenter ${c.datacenter}: NOT COPIED: ${c.error.message}\n`;
    return `Datacenter ${c.datacenter}:\n${renderCopy(c.result!, 'text', showOps)}`;
  });
  if (failed.length) sections.push(`${failed.length} of ${copies.length} datacenter(s) were not copied (${failed.map((c) => c.datacenter).join(', ')}); run the copy again once they answer (--resume continues an interrupted one).\n`);
  return sections.join('\n');
}

/** What the JSON report holds of `count` keys it lists `listed` of. */
function jsonLists(listed: number, count: number): string {
  return listed >= count ? '--format json lists them all' : `--format json lists the first ${listed} of the ${count}`;
}
