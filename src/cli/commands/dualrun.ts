import { Command, Option } from 'commander';
import { ExitCode, UsageError, isMigrateError } from '../../errors.js';
import type { GlobalOptions } from '../context.js';
import type { CommandRegistrar } from '../main.js';
import { TOOL_VERSION } from '../version.js';
import { DEFAULT_PAGE_KEYS } from '../../stores/types.js';
import type { DualRunStats } from '../../dualrun/dualrun.js';
import { STOP_SIGNALS, takeHeldSignals } from '../early-signals.js';

interface DualRunFlags {
  ha?: boolean;
  baseline?: boolean;
  acceptMappingChange?: boolean;
  allowMassDelete?: boolean;
  metricsAddr?: string;
  heartbeatKey?: string;
  logFormat: 'text' | 'json';
}

export function registerDualRun({ add }: CommandRegistrar): void {
  add(
    new Command('dualrun')
      .description('replicate every etcd change under the copy rules into Consul until stopped (SIGTERM/SIGINT: clean stop, exit 0)')
      .option('--ha', 'run as one of several replicas: the others wait as standbys and take over')
      .option('--baseline', 'run the copy first when there is no checkpoint yet')
      .option('--accept-mapping-change', 'go on although the mapping changed (changed rules are re-baselined)')
      .option('--allow-mass-delete', 'let deletes past the guard through (more than 10% and more than 10 of a rule\'s keys): a re-baseline after etcd compaction deleting in Consul keys deleted in etcd while the dual-run was behind, and a reverse mirror deleting in etcd keys Consul dropped at once')
      .option('--metrics-addr <host:port>', 'serve Prometheus /metrics and /healthz here (e.g. :9464)')
      .option('--heartbeat-key <etcd key>', 'time the lag end to end: the leader writes the time to this etcd key (outside every copy rule; needs write on it) every second')
      .addOption(new Option('--log-format <format>', 'log lines on stderr').choices(['text', 'json']).default('text'))
      .addHelpText('after', '\nExamples:\n  migrate dualrun --metrics-addr :9464\n  migrate dualrun --ha --log-format json\n  migrate dualrun --heartbeat-key /_migrate/heartbeat --metrics-addr :9464\n'),
    ['text', 'json'],
    async (ctx, options: DualRunFlags & GlobalOptions) => {
      const { resolveConnections } = await import('../../config/connections.js');
      const { openStores, openDatacenters } = await import('../stores.js');
      const { runDualRun } = await import('../../dualrun/dualrun.js');
      const { DualRunMetrics, datacenterLag, heardRevision, lagRevisions, lagSeconds } = await import('../../dualrun/metrics.js');
      const { runCopy } = await import('../../copy/copy.js');
      // Said as log lines (--log-format json keeps stderr NDJSON) once the log is set up.
      const mappingWarnings: string[] = [];
      const loaded = await ctx.loadConfig(options.config, true, (text) => mappingWarnings.push(text));
      const { checkHeartbeatKey } = await import('../../dualrun/lag-heartbeat.js');
      const heartbeatKey = options.heartbeatKey !== undefined ? checkHeartbeatKey(loaded.mapping, options.heartbeatKey) : undefined;
      const connections = resolveConnections(loaded.config, options, ctx.io.env, ctx.io.cwd, loaded.file);
      const { source, target, close } = openStores(connections, loaded.config);
      // On a terminal, a live status view with the log lines scrolling above it; otherwise log lines alone.
      const live = ctx.interactive && ctx.progress === 'auto' && options.logFormat !== 'json';
      const view = live ? (await import('../../report/dualrun-view.js')).createDualRunView(process.stderr, { heartbeat: heartbeatKey !== undefined }) : undefined;
      const line = (text: string) => (view ? view.log(text) : ctx.log(text));
      const log = (level: 'info' | 'warn' | 'error', message: string, fields: Record<string, unknown> = {}) => {
        if (options.logFormat === 'json') line(JSON.stringify({ ts: new Date().toISOString(), level, msg: message, ...fields }));
        // --progress json: stderr holds NDJSON events only, as for every command (its log lines are `log` events).
        else if (ctx.progress === 'json') line(JSON.stringify({ ts: new Date().toISOString(), event: 'log', level, msg: message, ...fields }));
        else line(`${new Date().toISOString()} ${level.padEnd(5)} ${message}${Object.keys(fields).length ? ` ${JSON.stringify(fields)}` : ''}`);
      };
      for (const text of mappingWarnings) log('warn', text);
      // Retries inside one request are otherwise silent: a Consul that stops answering would show nothing until it came back.
      let retryLoggedAt = 0;
      target.observeRetries((err, attempt, delayMs) => {
        if (Date.now() - retryLoggedAt < 5_000) return;
        retryLoggedAt = Date.now();
        log('warn', `Consul did not answer a request (${(err as Error).message}); retrying in ${Math.round(delayMs)} ms (attempt ${attempt + 1})`, isMigrateError(err) ? { code: err.code } : {});
      });
      const controller = new AbortController();
      const stop = () => {
        if (!controller.signal.aborted) log('info', 'stopping: finishing the current txn and releasing the leader lock (if held)');
        controller.abort();
      };
      for (const signal of STOP_SIGNALS) process.on(signal, stop);
      if (takeHeldSignals().length > 0) stop();
      const metrics = new DualRunMetrics({ heartbeat: heartbeatKey !== undefined });
      try {
        if (options.metricsAddr) log('info', `metrics on http://${await metrics.listen(options.metricsAddr)}/metrics, readiness on /healthz`);
        const { preflightConsul, preflightEtcdReads } = await import('../../doctor/preflight.js');
        const lanes = await openDatacenters(loaded, target);
        if (lanes.length > 1 && options.datacenter) {
          throw new UsageError('flag_invalid', `--datacenter ${options.datacenter}: with rules in several datacenters, one dual-run serves them all (${lanes.map((l) => l.datacenter).join(', ')}).`, {
            hint: 'Leave --datacenter out; set target.datacenter in migration.yaml to choose the primary datacenter, which holds the leader lock.',
          });
        }
        const { ConsulTarget } = await import('../../stores/consul.js');
        for (const lane of lanes) {
          // Another datacenter is checked once, without the retries that ride out an election: one that does not
          // answer must not hold up the start of the others (its lane retries it).
          const checked = lane.primary ? lane.target : new ConsulTarget(lane.target.http, { limits: lane.config.target.limits, retry: { attempts: 1, busyAttempts: 1 } });
          try {
            await preflightConsul(checked, lane.config, lane.mapping, lanes.length > 1 ? `dualrun (${lane.datacenter})` : 'dualrun', { writeTargets: true, writeState: true, sessions: true });
          } catch (err) {
            // Another datacenter that does not answer now is retried by its lane; it does not keep the others from starting.
            if (lane.primary || !isMigrateError(err) || err.exitCode !== ExitCode.server) throw err;
            log('warn', `${lane.datacenter}: not checked before the start (${err.message}); replicating into the other datacenters meanwhile`, { datacenter: lane.datacenter });
          }
        }
        await preflightEtcdReads(source, loaded.mapping, 'dualrun');
        let lastLog = 0;
        // The last stats seen: a dual-run that fails says, as one that stops does, what becomes of the leased keys.
        let last: DualRunStats | undefined;
        const unrenewed = (sessions: number) => log('warn', `${sessions} Consul session(s) mirror etcd leases and nothing renews them now: Consul deletes their keys 1 to 2 × their TTL from now, while etcd keeps them, unless ${options.ha ? 'a standby takes the lead or ' : ''}a dual-run runs again by then (it re-creates them and rewrites the keys)`, { sessions });
        const { EtcdWriter } = await import('../../stores/etcd-writer.js');
        const { ConsulBlockingReader } = await import('../../stores/consul-blocking.js');
        const writer = new EtcdWriter(source);
        const summary = await runDualRun({ source, writer, lanes: lanes.map((lane) => ({ ...lane, blocking: new ConsulBlockingReader(lane.target.http) })) }, {
          ha: Boolean(options.ha),
          baseline: Boolean(options.baseline),
          acceptMappingChange: Boolean(options.acceptMappingChange),
          allowMassDelete: Boolean(options.allowMassDelete),
          signal: controller.signal,
          toolVersion: TOOL_VERSION,
          log,
          ...(heartbeatKey ? { heartbeatKey } : {}),
          copy: (over, lane) => runCopy({ source, target: lane.target, config: lane.config, mapping: lane.mapping }, {
            dryRun: false, recordOps: false, resume: false, onConflict: 'overwrite', deleteExtraneous: false, allowMassDelete: false,
            acceptMappingChange: Boolean(options.acceptMappingChange), deferMappingChange: true, rate: 0, concurrency: 8, pageKeys: DEFAULT_PAGE_KEYS, signal: controller.signal,
            now: () => new Date(), toolVersion: TOOL_VERSION, ...over,
          }),
          onStats: (stats) => {
            last = stats;
            metrics.update(stats);
            view?.update(stats);
            const now = Date.now();
            // From the first answer of the etcd watch on: before it, etcd's revision is not known yet (it read 0).
            if (!view && now - lastLog >= 10_000 && stats.role === 'leader' && stats.etcdRevision > 0) {
              lastLog = now;
              // As /metrics counts it: what the watch heard, taken by the applier or still waiting (a frozen Consul).
              log('info', 'progress', {
                checkpoint: stats.checkpoint, etcdRevision: heardRevision(stats), lagRevisions: lagRevisions(stats), lagSeconds: Number(lagSeconds(stats, now).toFixed(3)), events: stats.events, txns: stats.txns, sessions: stats.sessions,
                ...(stats.datacenters ? { datacenters: Object.fromEntries(Object.entries(stats.datacenters).map(([dc, d]) => [dc, { checkpoint: d.checkpoint, lagRevisions: datacenterLag(stats, d), connected: d.connected }])) } : {}),
              });
            }
          },
        }).catch((err: unknown) => {
          // Said before the error (main prints it last): a dual-run that fails leaves the sessions as one that stops.
          if (last?.role === 'leader' && last.sessions > 0) unrenewed(last.sessions);
          throw err;
        });
        // A standby that never led has no checkpoint of its own to report.
        const where = summary.leading ? `at checkpoint ${summary.stats.checkpoint}` : summary.stats.checkpoint > 0 ? `as a standby (it last led up to checkpoint ${summary.stats.checkpoint}; the leader holds the migration's)` : 'as a standby that never led';
        log('info', `stopped (${summary.reason}) ${where}`, { events: summary.stats.events, txns: summary.stats.txns });
        // Documented, and still the surprise of a stop for maintenance: the leased keys go from Consul while etcd keeps them.
        if (summary.leading && summary.stats.sessions > 0) unrenewed(summary.stats.sessions);
        if (ctx.format === 'json') {
          const { renderEnvelope } = await import('../../report/envelope.js');
          ctx.result(renderEnvelope('dualrun', 'ok', { reason: summary.reason, stats: summary.stats }));
        }
        return ExitCode.ok;
      } finally {
        for (const signal of STOP_SIGNALS) process.off(signal, stop);
        await view?.close();
        await metrics.close();
        close();
      }
    },
    { oneShot: false },
  );
}
