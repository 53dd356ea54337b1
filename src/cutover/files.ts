import type { ExportSink } from '../export/export.js';
import type { WholeFile } from '../export/whole-file.js';
import type { CompiledRule, Mapping } from '../mapping/mapping.js';
import { findRule } from '../mapping/route.js';
import { readAgainAtFreshRevision } from '../stores/etcd.js';
import { prefixRange } from '../stores/key-range.js';
import type { SourceReader, TargetStore } from '../stores/types.js';

/** Keys per Consul read while exporting. */
const READ_CHUNK = 1000;

/** A JSON array, item by item, into `sink`. */
async function writeJsonArray(sink: ExportSink, fill: (write: (item: unknown) => Promise<void>) => Promise<void>): Promise<void> {
  let first = true;
  await sink.write('[');
  await fill(async (item) => {
    await sink.write(`${first ? '' : ','}\n  ${JSON.stringify(item)}`);
    first = false;
  });
  await sink.write(first ? ']\n' : '\n]\n');
}

/**
 * The rollback point of a cutover: every Consul key under the rule's `to`,
 * as `consul kv import` JSON (values base64). Read in chunks; `out` becomes
 * the file only once whole, and never replaces one.
 */
export async function exportConsulRule(target: TargetStore, rule: CompiledRule, out: WholeFile): Promise<{ keys: number; bytes: number }> {
  const keys = await target.listKeys(rule.to);
  let bytes = 0;
  try {
    await writeJsonArray(out.open(), async (write) => {
      for (let i = 0; i < keys.length; i += READ_CHUNK) {
        for (const entry of await target.readEntries(keys.slice(i, i + READ_CHUNK), undefined, { listed: keys })) {
          bytes += entry.value.length;
          await write({ key: entry.key, flags: entry.flags, value: entry.value.toString('base64') });
        }
      }
    });
    await out.commit();
  } finally {
    await out.drop();
  }
  return { keys: keys.length, bytes };
}

/**
 * `finalize --export-etcd`: the rule's etcd keys at one pinned revision, as
 * JSON `[{key, value}]` (both base64: etcd keys are bytes), into `out`, which
 * becomes the file once whole. Keys of nested rules (a longer `from`, a keep
 * rule) are not the rule's and are left out. When etcd compacts the revision
 * mid-read, reads again at the current one (at most three reads, each with a
 * warning), dropping what was written. Returns the keys, for `--delete-etcd`.
 */
export async function readEtcdRule(
  source: SourceReader,
  mapping: Mapping,
  rule: CompiledRule,
  out: WholeFile | undefined,
  onWarning: (message: string) => void,
): Promise<{ revision: number; keys: Buffer[]; compactedAt: number[] }> {
  const compactedAt: number[] = [];
  for (;;) {
    const revision = (await source.status()).revision;
    const keys: Buffer[] = [];
    const collect = async (write?: (item: unknown) => Promise<void>) => {
      for await (const page of source.readPages(prefixRange(rule.fromBytes), { revision })) {
        for (const entry of page.entries) {
          if (findRule(mapping, entry.key)?.name !== rule.name) continue;
          keys.push(entry.key);
          await write?.({ key: entry.key.toString('base64'), value: entry.value.toString('base64') });
        }
      }
    };
    try {
      if (!out) await collect();
      else {
        await writeJsonArray(out.open(), collect);
        await out.commit();
      }
      return { revision, keys, compactedAt };
    } catch (err) {
      await out?.drop();
      if (!readAgainAtFreshRevision(err, compactedAt.length + 1)) throw err;
      compactedAt.push(revision);
      onWarning(`etcd compacted revision ${revision} while finalize read rule ${rule.name}; reading it again at the current revision`);
    }
  }
}
