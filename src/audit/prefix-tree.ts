import { formatKey } from '../report/keys.js';

/**
 * A key-prefix inventory built in one pass over keys in byte order. Every
 * prefix's keys are contiguous in that order, so a node is complete as soon
 * as a key outside it arrives: only the current path is open, and each closed
 * node keeps its `top` largest children (the rest are folded into `other`).
 * Memory is bounded by depth and `top`, never by the number of keys.
 *
 * Segments are split on `/`. A leading `/` belongs to the first segment, so
 * `/registry/pods/x` has the prefixes `/registry/` and `/registry/pods/`.
 */

/** Totals of a prefix (including every key below it). */
export interface PrefixStats {
  keys: number;
  keyBytes: number;
  valueBytes: number;
  leasedKeys: number;
  maxValueBytes: number;
  /** Sum of the keys' `version`, for the mean number of writes per key. */
  versionSum: number;
  maxVersion: number;
  /** The highest `mod_revision` seen: how recently anything under the prefix changed. */
  newestModRevision: number;
}

/** A finished prefix, as reported. */
export interface PrefixNode extends PrefixStats {
  /** The prefix as shown to people ({@link formatKey}); `''` for the root. */
  prefix: string;
  depth: number;
  /** Keys that end at this level (no further `/` within the depth limit). */
  directKeys: number;
  /** The largest children by key count, largest first. */
  children: PrefixNode[];
  /** Children left out of `children` (over the `top` limit), folded together. */
  other: (PrefixStats & { prefixes: number }) | null;
}

export function emptyStats(): PrefixStats {
  return { keys: 0, keyBytes: 0, valueBytes: 0, leasedKeys: 0, maxValueBytes: 0, versionSum: 0, maxVersion: 0, newestModRevision: 0 };
}

export function addStats(into: PrefixStats, from: PrefixStats): void {
  into.keys += from.keys;
  into.keyBytes += from.keyBytes;
  into.valueBytes += from.valueBytes;
  into.leasedKeys += from.leasedKeys;
  into.versionSum += from.versionSum;
  if (from.maxValueBytes > into.maxValueBytes) into.maxValueBytes = from.maxValueBytes;
  if (from.maxVersion > into.maxVersion) into.maxVersion = from.maxVersion;
  if (from.newestModRevision > into.newestModRevision) into.newestModRevision = from.newestModRevision;
}

interface OpenNode {
  prefix: Buffer;
  depth: number;
  stats: PrefixStats;
  directKeys: number;
  children: PrefixNode[];
  other: (PrefixStats & { prefixes: number }) | null;
}

const SLASH = 0x2f;

/** Positions of `/` in `key`, written to `out`; returns how many (at most `out.length`). */
export function findSlashes(key: Buffer, out: Int32Array): number {
  let n = 0;
  let i = key.indexOf(SLASH);
  while (i !== -1 && n < out.length) {
    out[n++] = i;
    i = key.indexOf(SLASH, i + 1);
  }
  return n;
}

export interface PrefixTreeOptions {
  /** Levels of prefixes (segments) to keep; default 2. */
  depth: number;
  /** Children kept per prefix below the root. */
  top: number;
  /** Children kept at the root (the top-level prefixes `init` turns into rules). */
  rootTop: number;
}

export class PrefixTreeBuilder {
  private readonly open: OpenNode[];

  constructor(private readonly options: PrefixTreeOptions) {
    this.open = [newNode(Buffer.alloc(0), 0)];
  }

  /** Adds one key, with its `/` positions from {@link findSlashes}; keys must arrive in byte order. */
  add(key: Buffer, slashes: Int32Array, count: number, valueBytes: number, leased: boolean, version: number, modRevision: number): void {
    const depth = this.options.depth;
    // A leading "/" is part of the first segment, not a separator.
    const first = count > 0 && slashes[0] === 0 ? 1 : 0;
    const levels = Math.min(depth, count - first);
    let d = 1;
    for (; d <= levels; d++) {
      const end = slashes[first + d - 1]! + 1;
      const node = this.open[d];
      if (node && node.prefix.length === end && key.compare(node.prefix, 0, end, 0, end) === 0) continue;
      this.closeFrom(d);
      this.open[d] = newNode(Buffer.from(key.subarray(0, end)), d);
      for (let e = d + 1; e <= levels; e++) {
        const endE = slashes[first + e - 1]! + 1;
        this.open[e] = newNode(Buffer.from(key.subarray(0, endE)), e);
      }
      break;
    }
    if (this.open.length > levels + 1) this.closeFrom(levels + 1);
    const node = this.open[levels]!;
    node.directKeys++;
    const s = node.stats;
    s.keys++;
    s.keyBytes += key.length;
    s.valueBytes += valueBytes;
    if (leased) s.leasedKeys++;
    s.versionSum += version;
    if (valueBytes > s.maxValueBytes) s.maxValueBytes = valueBytes;
    if (version > s.maxVersion) s.maxVersion = version;
    if (modRevision > s.newestModRevision) s.newestModRevision = modRevision;
  }

  /** Closes every open node and returns the root. */
  finish(): PrefixNode {
    this.closeFrom(1);
    return finishNode(this.open[0]!);
  }

  private closeFrom(depth: number): void {
    for (let d = this.open.length - 1; d >= depth; d--) {
      const node = this.open[d]!;
      const parent = this.open[d - 1]!;
      addStats(parent.stats, node.stats);
      keepChild(parent, finishNode(node), d === 1 ? this.options.rootTop : this.options.top);
    }
    this.open.length = Math.min(this.open.length, depth);
  }
}

function newNode(prefix: Buffer, depth: number): OpenNode {
  return { prefix, depth, stats: emptyStats(), directKeys: 0, children: [], other: null };
}

function finishNode(node: OpenNode): PrefixNode {
  return { prefix: formatKey(node.prefix), depth: node.depth, ...node.stats, directKeys: node.directKeys, children: node.children.sort(byKeys), other: node.other };
}

function byKeys(a: PrefixNode, b: PrefixNode): number {
  return b.keys - a.keys || (a.prefix < b.prefix ? -1 : a.prefix > b.prefix ? 1 : 0);
}

/** Keeps `child` among the parent's `cap` largest children; what does not fit goes to `other`. */
function keepChild(parent: { children: PrefixNode[]; other: (PrefixStats & { prefixes: number }) | null }, child: PrefixNode, cap: number): void {
  let evicted: PrefixNode | undefined = child;
  if (parent.children.length < cap) {
    parent.children.push(child);
    evicted = undefined;
  } else if (cap > 0) {
    let min = 0;
    for (let i = 1; i < parent.children.length; i++) if (parent.children[i]!.keys < parent.children[min]!.keys) min = i;
    if (parent.children[min]!.keys < child.keys) {
      evicted = parent.children[min];
      parent.children[min] = child;
    }
  }
  if (evicted) {
    parent.other ??= { ...emptyStats(), prefixes: 0 };
    addStats(parent.other, evicted);
    parent.other.prefixes += 1;
  }
}

/**
 * Joins trees built over disjoint key ranges (the audit reads keys with and
 * without a leading `/` as two ordered streams). Their top-level prefixes never
 * overlap, so the roots' children are pooled and cut to `rootTop` again.
 */
export function mergePrefixTrees(trees: PrefixNode[], rootTop: number): PrefixNode {
  const root: PrefixNode = { prefix: '', depth: 0, ...emptyStats(), directKeys: 0, children: [], other: null };
  for (const tree of trees) {
    addStats(root, tree);
    root.directKeys += tree.directKeys;
    for (const child of tree.children) keepChild(root, child, rootTop);
    if (tree.other) {
      root.other ??= { ...emptyStats(), prefixes: 0 };
      addStats(root.other, tree.other);
      root.other.prefixes += tree.other.prefixes;
    }
  }
  root.children.sort(byKeys);
  return root;
}

/**
 * End offset of `key`'s prefix at `depth` levels (the same levels as the
 * tree), or of its deepest level when it has fewer; 0 for a key without `/`.
 */
export function prefixEndAtDepth(key: Buffer, depth: number): number {
  let from = key.length > 0 && key[0] === SLASH ? 1 : 0;
  let end = 0;
  for (let d = 0; d < depth; d++) {
    const i = key.indexOf(SLASH, from);
    if (i === -1) break;
    end = i + 1;
    from = i + 1;
  }
  return end;
}
