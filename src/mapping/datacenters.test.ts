import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { routeKey } from './route.js';
import { datacenterNames, datacenterViews } from './datacenters.js';

const yaml = (rules: string) => `version: 1\nid: m\nrules:\n${rules}`;

describe('datacenter views', () => {
  it('a configuration without datacenters has one view, the configuration itself', () => {
    const loaded = parseConfig(yaml('  - { name: app, from: /app/, to: app/ }\n'), 'm.yaml');
    const views = datacenterViews(loaded, 'dc1');
    expect(views).toHaveLength(1);
    expect(views[0]!.datacenter).toBe('dc1');
    expect(views[0]!.config).toBe(loaded.config);
    expect(views[0]!.mapping).toBe(loaded.mapping);
  });

  it('each datacenter copies the rules that name it; the others are kept on etcd there', () => {
    const loaded = parseConfig(yaml([
      '  - { name: app, from: /app/, to: app/, datacenters: [dc1, dc2] }',
      '  - { name: local, from: /app/local/, to: local/ }',
      '  - { name: far, from: /far/, to: far/, datacenters: [dc3] }',
      '',
    ].join('\n')), 'm.yaml');
    expect(datacenterNames(loaded.config, 'dc1')).toEqual(['dc1', 'dc2', 'dc3']);
    const views = datacenterViews(loaded, 'dc1');
    const byDc = Object.fromEntries(views.map((v) => [v.datacenter, v]));
    expect(byDc.dc1!.primary).toBe(true);
    expect(byDc.dc1!.mapping.copyRules.map((r) => r.name)).toEqual(['app', 'local']);
    expect(byDc.dc2!.mapping.copyRules.map((r) => r.name)).toEqual(['app']);
    expect(byDc.dc3!.mapping.copyRules.map((r) => r.name)).toEqual(['far']);
    // /app/local/ is not copied to dc2, and its keys do not fall through to the shorter /app/ there.
    expect(routeKey(byDc.dc2!.mapping, Buffer.from('/app/local/x')).kind).toBe('keep');
    expect(routeKey(byDc.dc2!.mapping, Buffer.from('/app/x'))).toMatchObject({ kind: 'mapped', target: 'app/x' });
  });

  it('a datacenter-specific view hashes like the single-datacenter mapping it equals', async () => {
    const { mappingHash } = await import('../state/state.js');
    const single = parseConfig(yaml('  - { name: app, from: /app/, to: app/ }\n'), 'm.yaml');
    const multi = parseConfig(yaml('  - { name: app, from: /app/, to: app/, datacenters: [dc1, dc2] }\n'), 'm.yaml');
    const views = datacenterViews(multi, 'dc1');
    expect(views.map((v) => mappingHash(v.config))).toEqual([mappingHash(single.config), mappingHash(single.config)]);
  });

  it('datacenters is refused on a rule that is not a copy rule, with its position', () => {
    expect(() => parseConfig(yaml('  - { name: svc, from: /svc/, action: service, datacenters: [dc2] }\n'), 'm.yaml')).toThrow(/m\.yaml:4:\d+: rules\[0\]\.datacenters: .*allowed: datacenters only with action: copy/);
    expect(() => parseConfig(yaml('  - { name: app, from: /app/, to: app/, datacenters: [] }\n'), 'm.yaml')).toThrow(/datacenters: must not be empty/);
    expect(() => parseConfig(yaml('  - { name: app, from: /app/, to: app/, datacenters: ["dc 2"] }\n'), 'm.yaml')).toThrow(/is not a datacenter name/);
  });
});
