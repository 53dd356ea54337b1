import { Command } from 'commander';
import { ExitCode } from '../../errors.js';
import type { CommandContext, GlobalOptions } from '../context.js';
import type { CommandRegistrar } from '../main.js';
import type { ProgressItem } from '../../report/progress.js';
import { collect, MAX_PAGE_KEYS, parseDuration, wholeNumber } from './audit-flags.js';
import { DEFAULT_PAGE_KEYS, PAGE_KEYS_HELP } from '../../stores/types.js';

interface AuditFlags {
  depth?: string;
  top?: string;
  prefix: string[];
  sample?: string;
  probe?: boolean;
  pageKeys?: string;
  suggestMapping?: string;
  force?: boolean;
}

export function registerAudit({ add }: CommandRegistrar): void {
  add(
    new Command('audit')
      .description('inventory etcd in one pass at a pinned revision: prefixes, sizes, leases, atomic groups, findings against Consul\'s limits and the mapping, and a copy-time estimate (reads only; --probe writes scratch keys)')
      .option('--depth <n>', 'prefix levels in the inventory', '2')
      .option('--top <n>', 'largest prefixes, values and leases shown per level', '10')
      .option('--prefix <prefix>', 'audit only this etcd prefix (repeatable; default the whole keyspace)', collect, [])
      .option('--sample <duration>', 'watch live writes for this long (e.g. 30s) for write rates and live transaction sizes')
      .option('--probe', `measure the target's write throughput with a few hundred scratch keys under the state prefix (written, then deleted)`)
      .option('--page-keys <n>', PAGE_KEYS_HELP, String(DEFAULT_PAGE_KEYS))
      .option('--suggest-mapping <file>', 'also write a draft migration.yaml from the findings (as `migrate init` does)')
      .option('--force', 'with --suggest-mapping: overwrite an existing file')
      .addHelpText('after', `
Without a mapping file the keys are judged under the identity mapping (names kept, one leading "/" stripped), and the
audit exits 1 only for what blocks every mapping (values over the size limit, keys over 256 KiB). With one, findings are judged per rule
and every blocker exits 1.

Examples:
  migrate audit
  migrate audit --format markdown > audit.md
  migrate audit -c migration.yaml --sample 30s --probe
  migrate audit --prefix /platform/ --depth 3 --format json
`),
    ['text', 'json', 'yaml', 'markdown'],
    async (ctx, options: AuditFlags & GlobalOptions) => {
      const depth = wholeNumber('--depth', options.depth, 2, 1);
      const top = wholeNumber('--top', options.top, 10, 1);
      const pageKeys = wholeNumber('--page-keys', options.pageKeys, DEFAULT_PAGE_KEYS, 1, MAX_PAGE_KEYS);
      const sampleMs = parseDuration('--sample', options.sample);
      const loaded = await ctx.loadConfig(options.config, false);
      if (options.suggestMapping && !options.force) {
        // Found out before the audit reads anything, not after it.
        const [{ existsSync }, { resolve }, { fileExists }] = await Promise.all([import('node:fs'), import('node:path'), import('./init.js')]);
        const file = resolve(ctx.io.cwd, options.suggestMapping);
        if (existsSync(file)) throw fileExists(file, 'audit');
      }
      const result = await auditWithStores(ctx, options, loaded, { depth, top, pageKeys, sampleMs, probe: Boolean(options.probe), prefixes: options.prefix });
      const { renderAudit } = await import('../../audit/render.js');
      ctx.result(renderAudit(result, ctx.format));
      if (options.suggestMapping) {
        const { writeDraft } = await import('./init.js');
        await writeDraft(ctx, result, { file: options.suggestMapping, force: Boolean(options.force), id: loaded.config.id === 'default' ? 'etcd-to-consul' : loaded.config.id });
      }
      if (result.scope.interrupted) return ExitCode.interrupted;
      return result.blockers > 0 ? ExitCode.findings : ExitCode.ok;
    },
  );
}

export interface AuditRun {
  depth: number;
  top: number;
  pageKeys: number;
  sampleMs: number | undefined;
  probe: boolean;
  prefixes: string[];
  /** Judge without the mapping file even when one is found (`init`). */
  identity?: boolean;
}

/** Opens the stores, runs the audit with progress on stderr, and closes them. */
export async function auditWithStores(ctx: CommandContext, options: GlobalOptions, loaded: import('../../config/load.js').LoadedConfig, run: AuditRun): Promise<import('../../audit/audit.js').AuditResult> {
  const { resolveConnections } = await import('../../config/connections.js');
  const { EtcdSource } = await import('../../stores/etcd.js');
  const { ConsulTarget } = await import('../../stores/consul.js');
  const { runAudit } = await import('../../audit/audit.js');
  const { createProgressView } = await import('../../report/progress.js');
  const { randomBytes } = await import('node:crypto');
  const connections = resolveConnections(loaded.config, options, ctx.io.env, ctx.io.cwd, loaded.file);
  const source = new EtcdSource(connections.source);
  // The target is optional for an audit: a short timeout and no retries, so a missing Consul costs a second, not minutes.
  const target = new ConsulTarget({ ...connections.target, timeoutMs: run.probe ? 10_000 : 3_000 }, { limits: loaded.config.target.limits, retry: { attempts: run.probe ? 3 : 1 } });
  const view = createProgressView(ctx);
  const progress = { title: 'auditing', items: [{ name: 'keys', total: 0, done: 0 }] as ProgressItem[], retries: 0, startedAt: Date.now() };
  try {
    const identity = run.identity || !loaded.file;
    if (identity && !run.identity && ctx.format === 'text') ctx.log('no mapping file: judging keys under the identity mapping (names kept, one leading "/" stripped)');
    if (!identity) await (await import('../stores.js')).checkNamedDatacenters(loaded, connections.target, (message) => view.warn(message));
    return await runAudit({
      source,
      target,
      config: loaded.config,
      // The audit reads etcd; with datacenters: in the rules the primary is target.datacenter of the file (the copy's too), else unnamed.
      primaryDatacenter: loaded.config.target.datacenter,
      configFile: identity ? undefined : loaded.file,
      mapping: identity ? undefined : loaded.mapping,
      prefixes: run.prefixes,
      depth: run.depth,
      top: run.top,
      pageKeys: run.pageKeys,
      sampleMs: run.sampleMs,
      probe: run.probe,
      signal: ctx.signal,
      runId: randomBytes(6).toString('hex'),
      onProgress: (event) => {
        if (event.phase === 'scan') {
          progress.items[0] = { name: 'keys', total: event.total ?? event.keys, done: event.keys };
          view.update(progress);
        } else if (event.phase === 'warning') view.warn(event.message);
        else if (ctx.progress === 'json') ctx.event({ event: 'phase', command: 'audit', ...event });
      },
    });
  } finally {
    await view.close();
    source.close();
    target.close();
  }
}
