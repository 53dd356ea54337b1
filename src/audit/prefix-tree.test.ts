import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PrefixTreeBuilder, findSlashes, mergePrefixTrees, prefixEndAtDepth, type PrefixNode } from './prefix-tree.js';

function build(keys: string[], options = { depth: 2, top: 10, rootTop: 100 }): PrefixNode {
  const tree = new PrefixTreeBuilder(options);
  const slashes = new Int32Array(64);
  for (const text of [...keys].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))) {
    const key = Buffer.from(text);
    tree.add(key, slashes, findSlashes(key, slashes), 10, text.includes('leased'), 1, 1);
  }
  return tree.finish();
}

function flat(node: PrefixNode): Record<string, number> {
  const out: Record<string, number> = {};
  const walk = (n: PrefixNode) => {
    for (const c of n.children) {
      out[c.prefix] = c.keys;
      walk(c);
    }
  };
  walk(node);
  return out;
}

describe('prefix tree', () => {
  it('counts keys per prefix to the depth, a leading "/" belonging to the first segment', () => {
    const root = build(['/registry/pods/a', '/registry/pods/b', '/registry/secrets/s', '/app/x', 'plain/y', 'top']);
    expect(flat(root)).toEqual({ '/registry/': 3, '/registry/pods/': 2, '/registry/secrets/': 1, '/app/': 1, 'plain/': 1 });
    expect(root.keys).toBe(6);
    expect(root.directKeys).toBe(1);
    expect(root.children[0]!.prefix).toBe('/registry/');
    expect(root.children[0]!.valueBytes).toBe(30);
  });

  it('keeps the top children per level and folds the rest into other', () => {
    const keys = ['a/1', 'a/2', 'a/3', 'b/1', 'b/2', 'c/1', 'd/1'];
    const root = build(keys, { depth: 1, top: 2, rootTop: 2 });
    expect(root.children.map((c) => [c.prefix, c.keys])).toEqual([['a/', 3], ['b/', 2]]);
    expect(root.other).toMatchObject({ prefixes: 2, keys: 2 });
    expect(root.keys).toBe(7);
  });

  it('keeps totals exact whatever the caps (property)', () => {
    fc.assert(fc.property(fc.uniqueArray(fc.stringMatching(/^\/?[ab]{0,2}(\/[ab]{0,2}){0,3}$/), { maxLength: 60 }), fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 3 }), (keys, depth, top) => {
      const root = build(keys.filter(Boolean), { depth, top, rootTop: top });
      const sum = (n: PrefixNode): number => n.directKeys + n.children.reduce((s, c) => s + sum(c), 0) + (n.other?.keys ?? 0);
      expect(root.keys).toBe(keys.filter(Boolean).length);
      expect(sum(root)).toBe(root.keys);
    }));
  });

  it('merges trees of disjoint streams', () => {
    const merged = mergePrefixTrees([build(['/a/x', '/b/y']), build(['a/x'])], 100);
    expect(merged.keys).toBe(3);
    expect(merged.children.map((c) => c.prefix).sort()).toEqual(['/a/', '/b/', 'a/']);
  });

  it('finds the prefix end at a depth like the tree does', () => {
    expect(Buffer.from('/a/b/c').subarray(0, prefixEndAtDepth(Buffer.from('/a/b/c'), 1)).toString()).toBe('/a/');
    expect(Buffer.from('/a/b/c').subarray(0, prefixEndAtDepth(Buffer.from('/a/b/c'), 5)).toString()).toBe('/a/b/');
    expect(prefixEndAtDepth(Buffer.from('top'), 2)).toBe(0);
  });
});
