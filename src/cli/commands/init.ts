import { Command } from 'commander';
import { ExitCode, UsageError } from '../../errors.js';
import type { CommandContext, GlobalOptions } from '../context.js';
import type { CommandRegistrar } from '../main.js';
import { auditWithStores } from './audit.js';
import { collect } from './audit-flags.js';

/** Levels of a prefix as the audit's prefix tree counts them (a leading "/" belongs to the first segment). */
function levelsOf(prefix: string): number {
  const body = prefix.startsWith('/') ? prefix.slice(1) : prefix;
  return body.split('/').length - 1;
}

interface InitFlags {
  output?: string;
  force?: boolean;
  id?: string;
  prefix: string[];
}

export function registerInit({ add }: CommandRegistrar): void {
  add(
    new Command('init')
      .description('audit etcd and write a commented draft migration.yaml: a rule per top-level prefix, keep for Kubernetes, leases: skip for locks and elections (reads only; writes the file)')
      .option('-o, --output <file>', 'where to write the draft', 'migration.yaml')
      .option('--force', 'overwrite an existing file')
      .option('--id <id>', 'the migration id in the draft', 'etcd-to-consul')
      .option('--prefix <prefix>', 'audit only this etcd prefix (repeatable); rules are drafted for the prefixes just below it', collect, [])
      .addHelpText('after', '\nExamples:\n  migrate init\n  migrate init --output staging.yaml --id staging\n'),
    ['text', 'json'],
    async (ctx, options: InitFlags & GlobalOptions) => {
      const { resolve } = await import('node:path');
      const { existsSync } = await import('node:fs');
      const file = resolve(ctx.io.cwd, options.output ?? 'migration.yaml');
      const { emptyConfig, NAME } = await import('../../config/load.js');
      // Refused before the audit runs, as a long audit that ends in "file exists" wastes the user's time.
      const id = options.id ?? 'etcd-to-consul';
      if (!NAME.test(id)) {
        throw new UsageError('flag_invalid', `--id ${JSON.stringify(id)} is not an id of letters, digits, ".", "_" and "-" starting with a letter or digit: the draft would not load.`, { hint: 'Pass --id <id>, for example --id staging or --id billing-2026.' });
      }
      if (existsSync(file) && !options.force) throw fileExists(file, 'init');
      const { compileMapping } = await import('../../mapping/mapping.js');
      // A file named with --config or MIGRATE_CONFIG gives the connections (endpoints, TLS, credentials, limits); its rules are not read.
      const named = options.config ?? ctx.io.env.MIGRATE_CONFIG;
      const given = named ? (await ctx.loadConfig(named, true)).config : undefined;
      const config = given ? { ...emptyConfig(), source: given.source, target: given.target, state: given.state } : emptyConfig();
      const parsed = { config, file: undefined, document: undefined, lineCounter: undefined };
      const loaded = { ...parsed, mapping: compileMapping(parsed) };
      // Rules go one level below each audited prefix (or at the top level): look exactly that deep, and keep many.
      const depth = 1 + Math.max(0, ...options.prefix.map(levelsOf));
      const result = await auditWithStores(ctx, options, loaded, { depth, top: 100, pageKeys: 5000, sampleMs: undefined, probe: false, prefixes: options.prefix, identity: true });
      if (result.scope.interrupted) return ExitCode.interrupted;
      const draft = await writeDraft(ctx, result, { file, force: Boolean(options.force), id });
      if (ctx.format === 'json') {
        const { renderEnvelope } = await import('../../report/envelope.js');
        ctx.result(renderEnvelope('init', 'ok', { file, rules: draft.rules.map((r) => ({ name: r.name, from: r.from, to: r.action === 'keep' || r.action === 'service' ? null : r.to, action: r.action, keys: r.keys ?? null, leases: r.leases ?? null })), notes: draft.notes, audit: { keys: result.totals.keys, findings: result.findings.map((f) => ({ code: f.code, severity: f.severity, count: f.count })) } }));
      } else {
        const lines = [`wrote ${file}: ${draft.rules.length} rule(s) from an audit of ${result.totals.keys} keys`];
        for (const r of draft.rules) lines.push(`  ${r.name.padEnd(24)} ${r.from} → ${r.action === 'keep' ? '(stays on etcd)' : r.action === 'service' ? '(service catalog)' : r.to}${r.leases ? `  leases: ${r.leases}` : ''}${r.keys ? `  keys: ${r.keys}` : ''}`);
        for (const note of draft.notes) lines.push(`note: ${note}`);
        const config = options.output ?? 'migration.yaml';
        lines.push(`next: review ${file}, then run \`migrate audit -c ${config}\` and \`migrate plan -c ${config}\``);
        ctx.result(lines.join('\n'));
      }
      return ExitCode.ok;
    },
  );
}

/** The draft's file exists: named as the command that writes it takes it (`init --output`, `audit --suggest-mapping`). */
export function fileExists(file: string, command: string): UsageError {
  return command === 'audit'
    ? new UsageError('file_exists', `${file} already exists; migrate audit --suggest-mapping does not overwrite it.`, { hint: 'Pass --force to overwrite it, or name another file with --suggest-mapping <file>.' })
    : new UsageError('file_exists', `${file} already exists; migrate init does not overwrite it.`, { hint: 'Pass --force to overwrite it, or --output <file> to write the draft elsewhere.' });
}

/** Writes the draft mapping of an audit (`init`, `audit --suggest-mapping`); refuses to overwrite without `force`. */
export async function writeDraft(ctx: CommandContext, result: import('../../audit/audit.js').AuditResult, options: { file: string; force: boolean; id: string }): Promise<import('../../audit/suggest.js').MappingDraft> {
  const { resolve } = await import('node:path');
  const { writeFileSync } = await import('node:fs');
  const { draftMapping } = await import('../../audit/suggest.js');
  const file = resolve(ctx.io.cwd, options.file);
  const draft = draftMapping(result, { id: options.id, generatedAt: new Date().toISOString() });
  try {
    writeFileSync(file, draft.text, { flag: options.force ? 'w' : 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw fileExists(file, ctx.command);
    throw new UsageError('file_unwritable', `Cannot write ${file}: ${(err as Error).message}.`, { hint: 'Check the directory and its permissions, or pass another path.' });
  }
  if (ctx.format === 'text' && ctx.command === 'audit') ctx.log(`wrote a draft mapping to ${file} (${draft.rules.length} rules); review it before use`);
  return draft;
}
