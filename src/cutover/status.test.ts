import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { MemorySource, MemoryTarget } from '../stores/memory.js';
import { runStatus } from './status.js';

describe('status', () => {
  it('counts each rule\'s own etcd keys: those of a nested rule are the nested rule\'s', async () => {
    const { config, mapping } = parseConfig(`version: 1
id: demo
rules:
  - { name: root, from: /, action: keep }
  - { name: services, from: /services/, to: services/ }
  - { name: web, from: /services/web/, to: web/ }
`, 'migration.yaml');
    const source = new MemorySource();
    source.put('/other', 'o');
    for (let i = 0; i < 3; i++) source.put(`/services/api-${i}`, 'a');
    for (let i = 0; i < 5; i++) source.put(`/services/web/w${i}`, 'w');
    const result = await runStatus({ source, target: new MemoryTarget(), config, mapping }, { now: () => new Date('2026-01-01T00:00:00Z'), maxVerifyAgeMs: 3_600_000 });
    expect(result.rules.map((r) => [r.name, r.keys.etcd])).toEqual([['root', 1], ['services', 3], ['web', 5]]);
  });
});
