import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { MemorySource } from '../stores/memory.js';
import { runExport, type ExportSink } from './export.js';

const loaded = parseConfig('version: 1\nid: demo\nrules:\n  - { name: app, from: /app/, to: app/ }\n', 'migration.yaml');

/** Sinks that keep what was written, and whether they were dropped. */
function sinks() {
  const opened: { text: string; discarded: boolean }[] = [];
  const open = (): ExportSink => {
    const sink = { text: '', discarded: false };
    opened.push(sink);
    return { write: (chunk) => void (sink.text += chunk), discard: () => void (sink.discarded = true) };
  };
  return { opened, open };
}

/** A source whose pinned reads get compacted after their second page, `times` times; `change` runs first. */
function compacting(times: number, change: (source: MemorySource) => void) {
  const source = new MemorySource();
  for (let i = 0; i < 20; i++) source.put(`/app/k${String(i).padStart(2, '0')}`, `v${i}`);
  const seen = source.compactDuringReads(2, times, () => change(source));
  return { source, seen };
}

describe('runExport when etcd compacts the revision it reads', () => {
  it('drops what it wrote and exports again at the current revision, with a warning', async () => {
    const { source, seen } = compacting(1, (s) => {
      s.delete('/app/k00');
      s.put('/app/k19', 'changed');
    });
    const first = (await source.status()).revision;
    const { opened, open } = sinks();
    const warnings: string[] = [];
    const result = await runExport({ source, config: loaded.config, mapping: loaded.mapping }, open, { pageKeys: 5, onWarning: (m) => warnings.push(m) });
    expect(seen.compactions).toBe(1);
    expect(opened.map((s) => s.discarded)).toEqual([true, false]);
    expect(result).toMatchObject({ compactedAt: [first], revision: first + 2, exported: 19 });
    expect(warnings).toEqual([`etcd compacted revision ${first} while the export read it; exporting again at the current revision`]);
    const entries = JSON.parse(opened[1]!.text) as { key: string; value: string }[];
    expect(entries.map((e) => e.key)).toEqual(Array.from({ length: 19 }, (_, i) => `app/k${String(i + 1).padStart(2, '0')}`));
    expect(Buffer.from(entries.at(-1)!.value, 'base64').toString()).toBe('changed');
  });

  it('compacted at every read, it fails with etcd_compacted after three, every sink dropped', async () => {
    const { source, seen } = compacting(Infinity, (s) => s.put('/other/tick', 'x'));
    const { opened, open } = sinks();
    await expect(runExport({ source, config: loaded.config, mapping: loaded.mapping }, open, { pageKeys: 5 })).rejects.toMatchObject({ code: 'etcd_compacted', exitCode: 3 });
    expect(seen.compactions).toBe(3);
    expect(opened.map((s) => s.discarded)).toEqual([true, true, true]);
  });
});

describe('runExport interrupted (Ctrl-C)', () => {
  it('fails with interrupted after the reads stop, and drops what it wrote: a partial export is never taken for a whole one', async () => {
    const source = new MemorySource();
    for (let i = 0; i < 20; i++) source.put(`/app/k${String(i).padStart(2, '0')}`, `v${i}`);
    const controller = new AbortController();
    const { opened, open } = sinks();
    const sink = () => {
      const inner = open();
      // The operator presses Ctrl-C once the first page is written.
      return { write: (chunk: string) => (inner.write(chunk), chunk.includes('app/k') ? controller.abort() : undefined), discard: inner.discard };
    };
    const run = runExport({ source, config: loaded.config, mapping: loaded.mapping }, sink, { pageKeys: 5, signal: controller.signal });
    await expect(run).rejects.toMatchObject({ code: 'interrupted', message: expect.stringMatching(/^export was interrupted after \d+ key\(s\): the export is not whole, and a file at --out is left as it was\.$/) });
    await run.catch((err: Error) => expect(Number(/after (\d+)/.exec(err.message)![1])).toBeLessThan(20));
    expect(opened.map((s) => s.discarded)).toEqual([true]);
  });
});
