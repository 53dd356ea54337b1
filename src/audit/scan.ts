import { ServerError, isMigrateError } from '../errors.js';
import { formatKey } from '../report/keys.js';
import { prefixEnd, prefixRange } from '../stores/key-range.js';
import type { KeyRange, SourceEntry, SourcePage, SourceReader } from '../stores/types.js';

/**
 * The streamed pass of the audit and the plan: pinned-revision pages over a
 * list of ranges, the next page requested while the current one is
 * processed, memory bounded by the page. A range the credentials may not read
 * (etcd RBAC) is recorded and skipped, so the rest is still audited.
 */

export interface ScanOptions {
  source: SourceReader;
  revision: number;
  pageKeys: number;
  signal?: AbortSignal;
  /** Called after each page with the keys read so far. */
  onPage?: (keysRead: number) => void;
}

export interface ScanOutcome {
  /** Ranges the pass tried to read. */
  ranges: number;
  keys: number;
  pages: number;
  /** Ranges etcd refused to read (permission denied). */
  unreadable: KeyRange[];
  /** True when the signal stopped the pass early. */
  interrupted: boolean;
}

/** `[start, end)` shown to people; the end is open when empty. */
export function describeRange(range: KeyRange): string {
  const end = prefixEnd(range.start);
  if (range.start.length > 0 && end.equals(range.end)) return `prefix ${formatKey(range.start)}`;
  if (range.start.length === 1 && range.start[0] === 0 && range.end.length === 0) return 'the whole keyspace';
  return `[${formatKey(range.start)}, ${range.end.length ? formatKey(range.end) : 'end'})`;
}

/** Whether etcd refused a read for lack of permission (the typed error of the etcd adapter). */
export function isPermissionDenied(err: unknown): boolean {
  return isMigrateError(err) && err.code === 'etcd_permission_denied';
}

/**
 * Entries of a list of ranges, in order, one page at a time. `entry` is
 * synchronous while the current page lasts; `fill` fetches the next page
 * (already requested in the background) when it is used up.
 */
export class EntryCursor {
  private rangeIndex = -1;
  private iterator: AsyncIterator<SourcePage> | undefined;
  private pending: Promise<IteratorResult<SourcePage>> | undefined;
  private page: SourceEntry[] = [];
  private index = 0;
  done = false;
  keys = 0;
  pages = 0;
  readonly unreadable: KeyRange[] = [];

  constructor(private readonly ranges: readonly KeyRange[], private readonly options: ScanOptions) {}

  /** The current entry, or undefined when the page is used up (call `fill`) or the cursor is done. */
  get entry(): SourceEntry | undefined {
    return this.page[this.index];
  }

  get needsFill(): boolean {
    return !this.done && this.index >= this.page.length;
  }

  advance(): void {
    this.index++;
  }

  /** Loads the next non-empty page; sets `done` after the last range. */
  async fill(): Promise<void> {
    while (!this.done && this.index >= this.page.length) {
      if (this.options.signal?.aborted) {
        this.done = true;
        return;
      }
      if (!this.iterator) {
        this.rangeIndex++;
        const range = this.ranges[this.rangeIndex];
        if (!range) {
          this.done = true;
          this.page = [];
          this.index = 0;
          return;
        }
        this.iterator = this.options.source.readPages(range, { revision: this.options.revision, pageKeys: this.options.pageKeys, signal: this.options.signal })[Symbol.asyncIterator]();
        this.pending = undefined;
      }
      let result: IteratorResult<SourcePage>;
      try {
        result = await (this.pending ?? this.iterator.next());
      } catch (err) {
        if (!isPermissionDenied(err)) throw err;
        this.unreadable.push(this.ranges[this.rangeIndex]!);
        this.iterator = undefined;
        continue;
      }
      if (result.done) {
        this.iterator = undefined;
        continue;
      }
      this.page = result.value.entries;
      this.index = 0;
      this.keys += this.page.length;
      this.pages++;
      // Ask for the next page now, so etcd works while this one is processed.
      const next = this.iterator.next();
      next.catch(() => undefined);
      this.pending = next;
      this.options.onPage?.(this.keys);
    }
  }
}

/** One ordered stream of entries over `ranges`, each handed to `visit`. */
export async function scanRanges(ranges: readonly KeyRange[], options: ScanOptions, visit: (entry: SourceEntry) => void): Promise<ScanOutcome> {
  const cursor = new EntryCursor(ranges, options);
  for (;;) {
    await cursor.fill();
    if (cursor.done) break;
    let entry = cursor.entry;
    while (entry) {
      visit(entry);
      cursor.advance();
      entry = cursor.entry;
    }
  }
  return { ranges: ranges.length, keys: cursor.keys, pages: cursor.pages, unreadable: cursor.unreadable, interrupted: Boolean(options.signal?.aborted) };
}

/**
 * The identity mapping strips one leading `/`, so `/a` and `a` would both
 * become `a`. Keys starting with `/` (stream A) and the others (stream B) are
 * read as two ordered streams and merged by their Consul key, which finds
 * every such pair with two pages in memory. Stripping a common first byte
 * keeps A in order, so a merge join is exact.
 */
export async function scanIdentityJoin(
  slashRanges: readonly KeyRange[],
  otherRanges: readonly KeyRange[],
  options: ScanOptions,
  visit: (entry: SourceEntry, stream: 0 | 1) => void,
  collide: (slashKey: Buffer, plainKey: Buffer) => void,
): Promise<ScanOutcome> {
  const onPage = options.onPage;
  const streamOptions = (): ScanOptions => ({ ...options, onPage: onPage ? () => onPage(a.keys + b.keys) : undefined });
  const a = new EntryCursor(slashRanges, streamOptions());
  const b = new EntryCursor(otherRanges, streamOptions());
  for (;;) {
    if (a.needsFill) await a.fill();
    if (b.needsFill) await b.fill();
    const ea = a.entry;
    const eb = b.entry;
    if (!ea && !eb) {
      if (a.done && b.done) break;
      continue;
    }
    // compare(strip(ea.key), eb.key) without slicing: source range [1, len) of ea.key against all of eb.key.
    const order = !ea ? 1 : !eb ? -1 : ea.key.compare(eb.key, 0, eb.key.length, 1, ea.key.length);
    if (order < 0) {
      visit(ea!, 0);
      a.advance();
    } else if (order > 0) {
      visit(eb!, 1);
      b.advance();
    } else {
      collide(ea!.key, eb!.key);
      visit(ea!, 0);
      visit(eb!, 1);
      a.advance();
      b.advance();
    }
  }
  return { ranges: slashRanges.length + otherRanges.length, keys: a.keys + b.keys, pages: a.pages + b.pages, unreadable: [...a.unreadable, ...b.unreadable], interrupted: Boolean(options.signal?.aborted) };
}

const WHOLE: KeyRange = { start: Buffer.from([0]), end: Buffer.alloc(0) };

/** The whole keyspace as a range. */
export function wholeKeyspace(): KeyRange {
  return { start: Buffer.from(WHOLE.start), end: Buffer.alloc(0) };
}

function maxBuf(a: Buffer, b: Buffer): Buffer {
  return Buffer.compare(a, b) >= 0 ? a : b;
}

/** `min` of two range ends, where an empty end means "no end". */
function minEnd(a: Buffer, b: Buffer): Buffer {
  if (a.length === 0) return b;
  if (b.length === 0) return a;
  return Buffer.compare(a, b) <= 0 ? a : b;
}

/** The part of `range` inside `[lo, hi)`, or undefined when empty. */
export function intersectRange(range: KeyRange, lo: Buffer, hi: Buffer): KeyRange | undefined {
  const start = maxBuf(range.start, lo);
  const end = minEnd(range.end, hi);
  if (end.length > 0 && Buffer.compare(start, end) >= 0) return undefined;
  return { start, end };
}

const SLASH = Buffer.from('/');
const AFTER_SLASH = Buffer.from('0');

/** Splits ranges into the keys that start with `/` and the others (for {@link scanIdentityJoin}). */
export function splitAtSlash(ranges: readonly KeyRange[]): { slash: KeyRange[]; other: KeyRange[] } {
  const slash: KeyRange[] = [];
  const other: KeyRange[] = [];
  for (const range of ranges) {
    const before = intersectRange(range, Buffer.from([0]), SLASH);
    const inside = intersectRange(range, SLASH, AFTER_SLASH);
    const after = intersectRange(range, AFTER_SLASH, Buffer.alloc(0));
    if (before) other.push(before);
    if (inside) slash.push(inside);
    if (after) other.push(after);
  }
  const order = (x: KeyRange, y: KeyRange) => Buffer.compare(x.start, y.start);
  return { slash: slash.sort(order), other: other.sort(order) };
}

/**
 * Prefix ranges sorted, with ranges inside another one dropped (a prefix of a
 * prefix), so a pass never reads a key twice.
 */
export function disjointPrefixRanges(prefixes: readonly (string | Buffer)[]): KeyRange[] {
  const buffers = [...new Set(prefixes.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p)).toString('hex')))].map((h) => Buffer.from(h, 'hex')).sort(Buffer.compare);
  const kept: Buffer[] = [];
  for (const prefix of buffers) {
    const last = kept[kept.length - 1];
    if (last && prefix.length >= last.length && prefix.subarray(0, last.length).equals(last)) continue;
    kept.push(prefix);
  }
  return kept.map((p) => (p.length === 0 ? wholeKeyspace() : { start: p, end: prefixEnd(p) }));
}

/**
 * The pass of a mapping-mode audit or plan: the scope (the whole keyspace
 * unless prefixes were given). When etcd refuses the whole keyspace
 * (credentials limited to some prefixes), the rules' own prefixes are read
 * instead; keys outside every rule are then unknown (`rulesOnly`).
 */
export async function scanWithRuleFallback(
  scope: KeyRange[],
  explicitScope: boolean,
  ruleFroms: readonly string[],
  options: ScanOptions,
  visit: (entry: SourceEntry) => void,
): Promise<{ outcome: ScanOutcome; ranges: KeyRange[]; rulesOnly: boolean }> {
  let outcome = await scanRanges(scope, options, visit);
  if (!explicitScope && outcome.keys === 0 && outcome.unreadable.length === outcome.ranges && ruleFroms.length > 0) {
    const ranges = disjointPrefixRanges(ruleFroms.map((f) => Buffer.from(f)));
    outcome = await scanRanges(ranges, options, visit);
    return { outcome, ranges, rulesOnly: true };
  }
  return { outcome, ranges: scope, rulesOnly: false };
}

/** Throws when etcd refused every range of the pass: there is nothing to report on. */
export function requireSomethingReadable(outcome: ScanOutcome, command: string): void {
  if (outcome.ranges > 0 && outcome.unreadable.length === outcome.ranges) {
    throw new ServerError('etcd_permission_denied', `etcd refused every read of the ${command} (${outcome.unreadable.map(describeRange).join(', ')}): the user's role lacks read permission.`, {
      hint: `Run \`migrate ${command}\` with --prefix <prefix> (repeatable) for the prefixes the user may read, or with credentials that can read the keyspace.`,
      details: { unreadable: outcome.unreadable.map(describeRange) },
    });
  }
}

/**
 * Warnings about `--prefix` values that likely do not say what was meant. One
 * no key starts with is most often a typo (etcd prefixes usually begin with
 * "/", Consul ones do not): say so, with the spelling that has keys. One
 * without a trailing "/" takes keys of other folders too (`/app` takes
 * `/apple/…`): say how many.
 */
export async function prefixWarnings(source: SourceReader, prefixes: readonly string[], revision: number): Promise<string[]> {
  const messages: string[] = [];
  const keysIn = async (range: { start: Buffer; end: Buffer }) => {
    try {
      return await source.count(range, revision);
    } catch (err) {
      if (!isMigrateError(err)) throw err;
      return undefined;
    }
  };
  const keysUnder = (prefix: string) => keysIn(prefixRange(prefix));
  for (const prefix of prefixes) {
    const all = await keysUnder(prefix);
    if (all === 0) {
      const other = prefix.startsWith('/') ? prefix.slice(1) : `/${prefix}`;
      const found = other === '' ? undefined : await keysUnder(other);
      messages.push(`--prefix ${formatKey(prefix)}: no etcd key at revision ${revision} starts with it${found ? `; ${found} key(s) start with ${formatKey(other)}` : ''}`);
      continue;
    }
    if (all === undefined || prefix === '' || prefix.endsWith('/')) continue;
    const exact = Buffer.from(prefix);
    const [folder, itself] = await Promise.all([keysUnder(`${prefix}/`), keysIn({ start: exact, end: Buffer.concat([exact, Buffer.from([0])]) })]);
    if (folder === undefined || itself === undefined) continue;
    const outside = all - folder - itself;
    if (outside > 0) messages.push(`--prefix ${formatKey(prefix)} does not end with "/": it also takes ${outside} key(s) that do not start with ${formatKey(`${prefix}/`)} (folders whose names start the same); end it with "/" for that folder alone`);
  }
  return messages;
}
