/**
 * Which keys Consul can serve back, and the reversible `escape` codec for the
 * ones it cannot.
 *
 * ## What Consul serves ({@link isServableKey})
 *
 * A key is servable when `GET /v1/kv/<key>` (the client percent-encoding the
 * whole key) returns exactly that key. Checked in this order; the first failure
 * is the reason:
 *
 * 1. `empty-key`: not empty (`Missing key name`).
 * 2. `invalid-utf8`: valid UTF-8 (JSON and the URL path are text; invalid bytes
 *    come back as U+FFFD).
 * 3. `control-character`: every character printable by Go's `unicode.IsPrint`
 *    at Unicode 15.0 (C0, DEL, C1, NBSP and the other non-ASCII spaces,
 *    U+2028/2029, format characters, unassigned code points get a 400 from the
 *    printable-path filter), and no U+FFFD, which Consul's JSON uses for
 *    invalid bytes: a key holding it cannot be told from a corrupted one.
 * 4. `leading-slash`: no leading `/` (Go's mux redirects `/v1/kv//x`).
 * 5. `empty-segment`: no `//` (redirected on older releases, silently cleaned
 *    to `/` by 1.22, which writes another key).
 * 6. `dot-segment`: no `.` or `..` segment, including a key ending in `/.` or
 *    `/..` (cleaned away, or refused as path traversal).
 * 7. `trailing-space`: no space at the start or the end (1.21.6+/1.22 refuse
 *    both; the reason covers the leading space too).
 * 8. Consul 1.21.6+/1.22 percent-decode the key once more when every `%` in it
 *    starts a `%XX` escape, and refuse it when the decoded text contains `..`
 *    anywhere (`dot-segment`) or a space anywhere (`trailing-space`).
 *    `app/a%20b` and `app/v1..2%41` are stored by a txn and then unreadable.
 *
 * A trailing `/` is fine: `a/` is an ordinary key in Consul's flat store.
 *
 * Consul 1.21.5 alone serves far fewer keys on `/v1/kv` (its txn endpoint takes
 * and lists the others): only `a-z A-Z 0-9 , _ . / - ? & =`, and no `..`
 * anywhere; 1.21.6 lifted the rule. A command that reaches such an agent marks
 * the mapping (`strictKeys`) and {@link strictKeyRefusal} makes every other
 * key `key-charset`; no escape helps, since the escapes use `~`.
 *
 * ## The escape scheme ({@link escapeKey}, {@link unescapeKey})
 *
 * The escape character is `~` (URL-unreserved, printable ASCII, left alone by
 * Go's path cleaning and by Consul's second percent-decoding). `%` is not used:
 * Consul 1.21.6+ would decode `%XX` escapes and refuse every escaped key whose
 * original holds a space or `..`. The input bytes are written left to right;
 * a segment is the text between two `/` bytes:
 *
 * | input | written as |
 * |---|---|
 * | the empty key | `~` (the only output that is a bare `~`) |
 * | `/` when the segment before it is empty (a leading `/`, the second `/` of `//`) | `~2F` |
 * | any other `/` | `/` |
 * | the first `.` of a segment that is exactly `.` or `..` | `~2E` (so `.` → `~2E`, `..` → `~2E.`) |
 * | a space that is the first or the last byte | `~20` |
 * | `~` and `%` | `~7E`, `~25` |
 * | any other space, and printable ASCII `!`–`}` other than `%` | itself |
 * | a well-formed UTF-8 sequence of a rune Go's `unicode.IsPrint` accepts, except U+FFFD | itself |
 * | any other byte (C0, DEL, every byte of a non-printable rune, every byte that is not part of a well-formed UTF-8 sequence) | `~` + two UPPERCASE hex digits |
 *
 * So `/legacy//double-slash` → `~2Flegacy/~2Fdouble-slash`, `a/./b` → `a/~2E/b`,
 * `bin\xff\xfe` → `bin~FF~FE`, `café` stays `café`, `50%` → `50~25`.
 *
 * **Reversible.** The output is a sequence of tokens, each either `~HH` or a
 * single character other than `~` (a literal `~` is always written `~7E`), so
 * it splits into tokens one way only; every token decodes to the bytes it was
 * written from, so `unescapeKey(escapeKey(x))` is `x` for every byte string.
 *
 * **Injective.** A function with a left inverse is injective: two byte strings
 * with the same escape would decode to the same bytes.
 *
 * **Canonical.** Only uppercase hex is written, and {@link unescapeKey}
 * accepts a text only when escaping its decoding gives the text back, so
 * `~2f`, `~41` (an `A` that was never escaped) or a stray `~` are refused:
 * every byte string has exactly one spelling and no `~2f`/`~2F` twins exist.
 *
 * **Unchanged when nothing needs escaping.** `escapeKey(x) === x` exactly
 * when `x` is servable and contains neither `~` nor `%`: every rule above
 * rewrites a byte only when it breaks one of the servability rules 1–7 or is
 * `~`/`%`, and (without `%`, rule 8 cannot apply) each broken rule rewrites
 * at least one byte. So any key that needed escaping contains a `~`, and a key
 * without `~` was not escaped. This is what lets a rule use plain substitution
 * for ordinary keys and the escape for the others with no collision between
 * the two (see `route.ts`).
 *
 * **Always servable.** The output is never empty; its characters are printable
 * and valid UTF-8; its first byte is never `/` or a space (a leading `/` or
 * space is escaped); a literal `/` is written only after a non-empty segment
 * and never followed by another literal `/`, so no empty segment appears except
 * the last one (a trailing `/`); every output segment that could be `.` or `..`
 * starts with `~2E` or contains a `~`; the last byte is never a space; and
 * there is no `%`, so Consul's second decoding sees nothing to decode. The
 * same holds after any `to` prefix that is servable and has no `%` (the
 * mapping refuses other `to` values): the prefix is followed by a segment
 * that starts neither with `/` nor with a space, and no dot or empty segment
 * can form across the join.
 */
import { ExitCode, MigrateError } from '../errors.js';
import { isPrintableRune } from './printable-runes.js';

/** Why a source key has no place in the target; see the module comment for the servability rules. */
export type UnmappableReason =
  | 'leading-slash'
  | 'empty-segment'
  | 'dot-segment'
  | 'invalid-utf8'
  | 'control-character'
  | 'value-too-large'
  | 'empty-key'
  | 'trailing-space'
  | 'key-too-long'
  | 'key-charset'
  | 'collision';

/** The answer of {@link isServableKey}. */
export type ServableCheck = { ok: true } | { ok: false; reason: UnmappableReason; detail: string };

/** The escape character of the codec. */
export const ESCAPE_CHAR = '~';

/** What the empty byte string escapes to (etcd has no empty key; the codec is total anyway). */
const EMPTY_KEY_TOKEN = '~';

const SLASH = 0x2f;
const DOT = 0x2e;
const SPACE = 0x20;
const TILDE = 0x7e;
const PERCENT = 0x25;
const REPLACEMENT_CHARACTER = 0xfffd;
const HEX = '0123456789ABCDEF';
const SERVABLE: ServableCheck = Object.freeze({ ok: true });
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;
const PRINTABLE_ASCII = /^[\x20-\x7e]*$/;
/** What any check after the characters' looks for: a leading " ", "." or "/", "//", a "." or ".." segment, a trailing " ", a "%". */
const STRUCTURE_SUSPECT = /^[ ./]|\/\/|\/\.\.?(?:\/|$)| $|%/;

/**
 * Whether Consul serves `key` back through `GET /v1/kv/<key>`. The one place
 * that knows Consul's rules (module comment); copy and verify use it too.
 * `shift` is added to the character numbers a detail gives, to count them in
 * the key shown beside it (the etcd key a Consul key is made from).
 */
export function isServableKey(key: string, shift = 0): ServableCheck {
  if (key.length === 0) return unservable('empty-key', 'the key is empty; Consul answers "Missing key name"');
  const long = keyTooLong(key);
  if (long) return long;
  if (PRINTABLE_ASCII.test(key)) {
    // Most keys: printable ASCII with nothing the checks below look for, settled in two native passes.
    if (!STRUCTURE_SUSPECT.test(key)) return SERVABLE;
  } else {
    const problem = unprintable(key, shift);
    if (problem) return problem;
  }
  if (key.charCodeAt(0) === SLASH) return unservable('leading-slash', 'the key begins with "/"; Consul redirects /v1/kv//… to another path');
  const double = key.indexOf('//');
  if (double !== -1) return unservable('empty-segment', `"//" at character ${characterNumber(key, double) + shift} makes an empty segment; Consul cleans it away and reads or writes another key`);
  // A "." or ".." segment, found without splitting the key (this runs for every copied key).
  const dots = key === '.' || key.startsWith('./') || key.includes('/./') || key.endsWith('/.') ? '.' : key === '..' || key.startsWith('../') || key.includes('/../') || key.endsWith('/..') ? '..' : undefined;
  if (dots) return unservable('dot-segment', `the key has a "${dots}" segment; Consul cleans it away or refuses it as path traversal`);
  if (key.charCodeAt(0) === SPACE) return unservable('trailing-space', 'the key begins with a space; Consul 1.21.6+ refuses leading and trailing spaces');
  if (key.charCodeAt(key.length - 1) === SPACE) return unservable('trailing-space', 'the key ends with a space; Consul 1.21.6+ refuses leading and trailing spaces');
  if (key.includes('%')) {
    const decoded = percentDecodeLikeGo(key);
    if (decoded && decoded.includes('..')) {
      return unservable('dot-segment', 'the key percent-decodes to text containing ".."; Consul 1.21.6+ decodes keys a second time and refuses that as path traversal');
    }
    if (decoded && decoded.includes(' ')) {
      return unservable('trailing-space', 'the key percent-decodes to text containing a space; Consul 1.21.6+ decodes keys a second time and refuses any space in the result');
    }
  }
  return SERVABLE;
}

const STRICT_CHARSET = /^[a-zA-Z0-9,_./?&=-]+$/;
/** The characters of {@link STRICT_CHARSET}, as messages name them. */
export const STRICT_CHARSET_TEXT = 'a-z A-Z 0-9 , _ . / - ? & =';

/**
 * Why Consul 1.21.5 refuses `key` on `/v1/kv` (module comment), or undefined.
 * Checked on keys the rules above already found servable.
 */
export function strictKeyRefusal(key: string): Extract<ServableCheck, { ok: false }> | undefined {
  if (!STRICT_CHARSET.test(key)) {
    const refused = [...key].find((c) => !STRICT_CHARSET.test(c))!;
    return unservable('key-charset', `the key holds ${refused === ' ' ? 'a space' : `"${refused}"`}, outside the characters Consul 1.21.5 serves on /v1/kv (${STRICT_CHARSET_TEXT})`);
  }
  if (key.includes('..')) return unservable('key-charset', 'the key contains "..", which Consul 1.21.5 refuses anywhere in a key');
  return undefined;
}

/**
 * The longest Consul key the tool writes, in UTF-8 bytes. Consul sets no limit of its own, but a key
 * must fit the other requests that name it: `GET /v1/kv/<key>` (Go's HTTP server, Consul's, reads about
 * 1 MiB of request line, and a key takes up to three times its bytes once percent-encoded: past that
 * it answers 431) and one txn op (a delete, a lock: 512 KiB a txn by default), with room for the ops
 * around it. A longer key is unmappable (`key-too-long`).
 */
export const MAX_KEY_BYTES = 256 * 1024;

/** A key longer than {@link MAX_KEY_BYTES}. */
export function keyTooLong(key: string): Extract<ServableCheck, { ok: false }> | undefined {
  // A UTF-16 unit is at most 3 UTF-8 bytes: most keys stop here.
  if (key.length * 3 <= MAX_KEY_BYTES) return undefined;
  const bytes = Buffer.byteLength(key, 'utf8');
  if (bytes <= MAX_KEY_BYTES) return undefined;
  return unservable('key-too-long', `the key is ${bytes} bytes, over the ${MAX_KEY_BYTES} a key may have: Consul could not serve it back through GET /v1/kv/<key> (HTTP 431 past about 1 MiB of URL) or handle it within its txn limit`);
}

/**
 * The first character of `key` Consul cannot serve (an unpaired surrogate, a
 * control or unprintable character, U+FFFD): in any URL path (a KV key, a
 * service instance id) Consul's HTTP API answers 400 for it.
 */
export function unprintable(key: string, shift: number): Extract<ServableCheck, { ok: false }> | undefined {
  const lone = LONE_SURROGATE.exec(key);
  if (lone) return unservable('invalid-utf8', `character ${characterNumber(key, lone.index) + shift} is an unpaired UTF-16 surrogate, which has no UTF-8 form`);
  for (let i = 0; i < key.length; i++) {
    const unit = key.charCodeAt(i);
    if (unit >= 0x20 && unit < 0x7f) continue;
    const codePoint = key.codePointAt(i)!;
    if (codePoint === REPLACEMENT_CHARACTER) {
      return unservable('control-character', `character ${characterNumber(key, i) + shift} is U+FFFD, which Consul's JSON also uses for invalid UTF-8, so the key could not be told from a corrupted one`);
    }
    if (!isPrintableRune(codePoint)) {
      return unservable('control-character', `character ${characterNumber(key, i) + shift} is ${describeRune(codePoint)}, which is not printable; Consul's HTTP API answers 400 for it`);
    }
    if (codePoint > 0xffff) i++;
  }
  return undefined;
}

/**
 * Escapes a byte string into a servable Consul key (scheme in the module
 * comment). Total, injective and canonical; the identity on servable keys
 * that contain neither `~` nor `%`.
 */
export function escapeKey(bytes: Uint8Array): string {
  const n = bytes.length;
  if (n === 0) return EMPTY_KEY_TOKEN;
  let out = '';
  let segmentStart = 0;
  let i = 0;
  while (i < n) {
    const byte = bytes[i]!;
    if (byte === SLASH) {
      // An empty segment before this slash is carried into the next segment as ~2F.
      out += i === segmentStart ? '~2F' : '/';
      segmentStart = ++i;
      continue;
    }
    if (byte === DOT && i === segmentStart && isDotSegmentAt(bytes, i)) {
      out += '~2E';
      i++;
      continue;
    }
    if (byte < 0x80) {
      const escape = byte === SPACE ? i === 0 || i === n - 1 : byte < 0x20 || byte === 0x7f || byte === TILDE || byte === PERCENT;
      out += escape ? hexByte(byte) : String.fromCharCode(byte);
      i++;
      continue;
    }
    const length = wellFormedSequenceLength(bytes, i);
    if (length === 0) {
      out += hexByte(byte);
      i++;
      continue;
    }
    const codePoint = decodeSequence(bytes, i, length);
    if (codePoint !== REPLACEMENT_CHARACTER && isPrintableRune(codePoint)) out += String.fromCodePoint(codePoint);
    else for (let k = 0; k < length; k++) out += hexByte(bytes[i + k]!);
    i += length;
  }
  return out;
}

/**
 * The bytes `escapeKey` was given, or `undefined` when `text` is not exactly
 * what {@link escapeKey} writes (a stray `~`, lowercase hex, an escape of a
 * byte that is never escaped, an unescaped `%`, …).
 */
export function tryUnescapeKey(text: string): Buffer | undefined {
  if (text === EMPTY_KEY_TOKEN) return Buffer.alloc(0);
  const source = Buffer.from(text, 'utf8');
  const out = Buffer.allocUnsafe(source.length);
  let length = 0;
  for (let i = 0; i < source.length; i++) {
    const byte = source[i]!;
    if (byte !== TILDE) {
      out[length++] = byte;
      continue;
    }
    const high = HEX.indexOf(String.fromCharCode(source[i + 1] ?? 0));
    const low = HEX.indexOf(String.fromCharCode(source[i + 2] ?? 0));
    if (high === -1 || low === -1) return undefined;
    out[length++] = high * 16 + low;
    i += 2;
  }
  const bytes = out.subarray(0, length);
  // Only the canonical spelling decodes; this also refuses lone surrogates
  // (they became EF BF BD above, which escapeKey writes as ~EF~BF~BD).
  return escapeKey(bytes) === text ? Buffer.from(bytes) : undefined;
}

/**
 * Inverts {@link escapeKey}: `unescapeKey(escapeKey(x))` equals `x` for every
 * byte string. Throws a {@link MigrateError} (`escaped_key_invalid`) for any
 * text `escapeKey` does not write; {@link tryUnescapeKey} returns `undefined`
 * instead.
 */
export function unescapeKey(text: string): Buffer {
  const bytes = tryUnescapeKey(text);
  if (bytes) return bytes;
  throw new MigrateError('escaped_key_invalid', ExitCode.findings, `The Consul key text ${JSON.stringify(text)} is not in the canonical form of migrate's key escape, so it cannot be decoded to an etcd key.`, {
    hint: 'It was not written by migrate (or was edited by hand): escapes are "~" followed by two uppercase hex digits, and "~" and "%" are always escaped.',
  });
}

function unservable(reason: UnmappableReason, detail: string): Extract<ServableCheck, { ok: false }> {
  return { ok: false, reason, detail };
}

/** 1-based number of the character (code point) at a UTF-16 index, for messages. */
/** Characters (code points) of `text`, counted as {@link characterNumber} counts them. */
export function characterCount(text: string): number {
  return characterNumber(text, text.length) - 1;
}

function characterNumber(text: string, index: number): number {
  let count = 0;
  for (let i = 0; i < index; i++) {
    const unit = text.charCodeAt(i);
    if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < index) i++;
    count++;
  }
  return count + 1;
}

function describeRune(codePoint: number): string {
  return `U+${codePoint.toString(16).toUpperCase().padStart(4, '0')}`;
}

function hexByte(byte: number): string {
  return `~${HEX[byte >> 4]}${HEX[byte & 15]}`;
}

/** Whether the segment starting at `i` is exactly `.` or `..`. */
function isDotSegmentAt(bytes: Uint8Array, i: number): boolean {
  const n = bytes.length;
  if (i + 1 === n || bytes[i + 1] === SLASH) return true;
  return bytes[i + 1] === DOT && (i + 2 === n || bytes[i + 2] === SLASH);
}

/**
 * Length of the well-formed UTF-8 sequence starting at `i` (Unicode table
 * 3-7: shortest form, no surrogates, at most U+10FFFF), or 0 when there is none.
 */
function wellFormedSequenceLength(bytes: Uint8Array, i: number): number {
  const b0 = bytes[i]!;
  const n = bytes.length;
  const continuation = (k: number, low = 0x80, high = 0xbf) => i + k < n && bytes[i + k]! >= low && bytes[i + k]! <= high;
  if (b0 >= 0xc2 && b0 <= 0xdf) return continuation(1) ? 2 : 0;
  if (b0 >= 0xe0 && b0 <= 0xef) {
    const low = b0 === 0xe0 ? 0xa0 : 0x80;
    const high = b0 === 0xed ? 0x9f : 0xbf;
    return continuation(1, low, high) && continuation(2) ? 3 : 0;
  }
  if (b0 >= 0xf0 && b0 <= 0xf4) {
    const low = b0 === 0xf0 ? 0x90 : 0x80;
    const high = b0 === 0xf4 ? 0x8f : 0xbf;
    return continuation(1, low, high) && continuation(2) && continuation(3) ? 4 : 0;
  }
  return 0;
}

function decodeSequence(bytes: Uint8Array, i: number, length: number): number {
  const b0 = bytes[i]!;
  if (length === 2) return ((b0 & 0x1f) << 6) | (bytes[i + 1]! & 0x3f);
  if (length === 3) return ((b0 & 0x0f) << 12) | ((bytes[i + 1]! & 0x3f) << 6) | (bytes[i + 2]! & 0x3f);
  return ((b0 & 0x07) << 18) | ((bytes[i + 1]! & 0x3f) << 12) | ((bytes[i + 2]! & 0x3f) << 6) | (bytes[i + 3]! & 0x3f);
}

/**
 * Go's `url.PathUnescape` as Consul's key validation uses it: `undefined`
 * when some `%` does not start a `%XX` escape (either hex case), else the
 * decoded bytes as latin1 text (only `..` and spaces are looked for, both ASCII).
 */
function percentDecodeLikeGo(key: string): string | undefined {
  const bytes = Buffer.from(key, 'utf8');
  let out = '';
  for (let i = 0; i < bytes.length; i++) {
    const byte = bytes[i]!;
    if (byte !== PERCENT) {
      out += String.fromCharCode(byte);
      continue;
    }
    const high = hexValue(bytes[i + 1]);
    const low = hexValue(bytes[i + 2]);
    if (high === -1 || low === -1) return undefined;
    out += String.fromCharCode(high * 16 + low);
    i += 2;
  }
  return out;
}

function hexValue(byte: number | undefined): number {
  if (byte === undefined) return -1;
  if (byte >= 0x30 && byte <= 0x39) return byte - 0x30;
  if (byte >= 0x41 && byte <= 0x46) return byte - 0x37;
  if (byte >= 0x61 && byte <= 0x66) return byte - 0x57;
  return -1;
}
