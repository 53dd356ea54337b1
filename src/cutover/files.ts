import { once } from 'node:events';
import { createWriteStream, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import type { CompiledRule, Mapping } from '../mapping/mapping.js';
import { findRule } from '../mapping/route.js';
import { prefixRange } from '../stores/etcd.js';
import type { SourceReader, TargetStore } from '../stores/types.js';

/** Keys per Consul read while exporting. */
const READ_CHUNK = 1000;

async function writeJsonArray(file: string, fill: (write: (item: unknown) => Promise<void>) => Promise<void>): Promise<void> {
  mkdirSync(dirname(file), { recursive: true });
  // Values are in it: as secret as the keyspace.
  const out = createWriteStream(file, { mode: 0o600, flags: 'wx' });
  await once(out, 'open');
  let first = true;
  const write = async (text: string) => {
    if (!out.write(text)) await once(out, 'drain');
  };
  try {
    await write('[');
    await fill(async (item) => {
      await write(`${first ? '' : ','}\n  ${JSON.stringify(item)}`);
      first = false;
    });
    await write(first ? ']\n' : '\n]\n');
    out.end();
    await once(out, 'finish');
  } finally {
    out.destroy();
  }
}

/**
 * The rollback point of a cutover: every Consul key under the rule's `to`,
 * as `consul kv import` JSON (values base64). Read in chunks; the file is
 * created mode 0600 and never overwritten.
 */
export async function exportConsulRule(target: TargetStore, rule: CompiledRule, file: string): Promise<{ keys: number; bytes: number }> {
  const keys = await target.listKeys(rule.to);
  let bytes = 0;
  await writeJsonArray(file, async (write) => {
    for (let i = 0; i < keys.length; i += READ_CHUNK) {
      for (const entry of await target.readEntries(keys.slice(i, i + READ_CHUNK), undefined, { listed: keys })) {
        bytes += entry.value.length;
        await write({ key: entry.key, flags: entry.flags, value: entry.value.toString('base64') });
      }
    }
  });
  return { keys: keys.length, bytes };
}

/**
 * `finalize --export-etcd`: the rule's etcd keys at one pinned revision, as
 * JSON `[{key, value}]` (both base64: etcd keys are bytes). Keys of nested
 * rules (a longer `from`, a keep rule) are not the rule's and are left out.
 * Returns the keys, for `--delete-etcd`.
 */
export async function readEtcdRule(source: SourceReader, mapping: Mapping, rule: CompiledRule, file: string | undefined): Promise<{ revision: number; keys: Buffer[] }> {
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
  if (file) await writeJsonArray(file, collect);
  else await collect();
  return { revision, keys };
}
