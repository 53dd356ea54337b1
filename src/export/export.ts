import type { MigrationConfig } from '../config/load.js';
import { InterruptedError } from '../errors.js';
import type { Mapping } from '../mapping/mapping.js';
import { routeKey } from '../mapping/route.js';
import { formatKey } from '../report/keys.js';
import { readAgainAtFreshRevision } from '../stores/etcd.js';
import { prefixRange } from '../stores/key-range.js';
import { DEFAULT_PAGE_KEYS, type SourceReader } from '../stores/types.js';

export interface ExportResult {
  revision: number;
  exported: number;
  bytes: number;
  /** Per rule and reason: keys not exported. */
  skipped: Record<string, Record<string, number>>;
  examples: { key: string; rule: string; reason: string }[];
  /** Leased keys exported as plain keys: `consul kv import` cannot attach sessions. */
  leasedAsPlain: number;
  /** Revisions etcd compacted while the export read them; it started again at a newer one. */
  compactedAt?: number[];
}

/** Where one attempt of the export writes; dropped when etcd compacts its revision mid-read. */
export interface ExportSink {
  write(chunk: string | Buffer): Promise<void> | void;
  discard(): Promise<void> | void;
}

/**
 * `migrate export`: the mapped keyspace at one pinned revision as the JSON
 * `consul kv import` reads (`[{"key", "flags", "value" (base64)}]`), for
 * air-gapped moves. Streams entry by entry: memory is bounded by a page.
 */
export async function runExport(
  deps: { source: SourceReader; config: MigrationConfig; mapping: Mapping },
  open: () => ExportSink,
  options: { pageKeys?: number; signal?: AbortSignal; onWarning?: (message: string) => void } = {},
): Promise<ExportResult> {
  const compactedAt: number[] = [];
  for (;;) {
    const revision = (await deps.source.status()).revision;
    const sink = open();
    try {
      const result = await exportAt(deps, sink, revision, options);
      // Ctrl-C ends the reads early, not with an error: what was read is not the whole keyspace, so it is not committed.
      if (options.signal?.aborted) {
        throw new InterruptedError(`export was interrupted after ${result.exported} key(s): the export is not whole, and a file at --out is left as it was.`, { hint: 'Run `migrate export` again.' });
      }
      return compactedAt.length > 0 ? { ...result, compactedAt } : result;
    } catch (err) {
      await sink.discard();
      // etcd compacted the revision while it was read (auto-compaction on a busy cluster): start again at the current one.
      if (!readAgainAtFreshRevision(err, compactedAt.length + 1, options.signal)) throw err;
      compactedAt.push(revision);
      options.onWarning?.(`etcd compacted revision ${revision} while the export read it; exporting again at the current revision`);
    }
  }
}

async function exportAt(deps: { source: SourceReader; config: MigrationConfig; mapping: Mapping }, sink: ExportSink, revision: number, options: { pageKeys?: number; signal?: AbortSignal }): Promise<ExportResult> {
  const write = (chunk: string) => sink.write(chunk);
  const result: ExportResult = { revision, exported: 0, bytes: 0, skipped: {}, examples: [], leasedAsPlain: 0 };
  const skip = (rule: string, reason: string, key: Buffer) => {
    const byRule = (result.skipped[rule] ??= {});
    byRule[reason] = (byRule[reason] ?? 0) + 1;
    if (result.examples.length < 20) result.examples.push({ key: formatKey(key), rule, reason });
  };
  await write('[');
  let first = true;
  for (const rule of deps.mapping.copyRules) {
    for await (const page of deps.source.readPages(prefixRange(rule.fromBytes), { revision, pageKeys: options.pageKeys ?? DEFAULT_PAGE_KEYS, signal: options.signal })) {
      const lines: string[] = [];
      for (const entry of page.entries) {
        const route = routeKey(deps.mapping, entry.key, { valueBytes: entry.value.length, maxValueBytes: deps.mapping.maxValueBytes });
        if (route.kind === 'mapped' && route.rule.name !== rule.name) continue;
        if (route.kind === 'unmappable') {
          if (route.rule.name === rule.name) skip(rule.name, route.reason, entry.key);
          continue;
        }
        if (route.kind !== 'mapped') continue;
        if (entry.lease !== '0') {
          if (rule.leases === 'skip') {
            skip(rule.name, 'lease-skip', entry.key);
            continue;
          }
          result.leasedAsPlain++;
        }
        lines.push(`${first ? '' : ','}\n  ${JSON.stringify({ key: route.target, flags: 0, value: entry.value.toString('base64') })}`);
        first = false;
        result.exported++;
        result.bytes += entry.value.length;
      }
      if (lines.length) await write(lines.join(''));
    }
  }
  await write(first ? ']\n' : '\n]\n');
  return result;
}
