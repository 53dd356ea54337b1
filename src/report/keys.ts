import { isPrintableRune } from '../mapping/printable-runes.js';

/**
 * How keys are shown to people: printable UTF-8 as it is, every other byte
 * (invalid UTF-8, characters Go's `unicode.IsPrint` calls unprintable: controls,
 * format characters such as U+202E, which reverses the rest of a line, line
 * separators, U+00A0; U+FFFD, which invalid UTF-8 would look like; `\`; a
 * space at either end) as `\xNN`. Keys are shown; values never are.
 */
export function formatKey(key: Buffer | string): string {
  if (typeof key === 'string') return escapeText(key);
  const text = key.toString('utf8');
  if (Buffer.from(text, 'utf8').equals(key)) return escapeText(text);
  let out = '';
  for (const byte of key) {
    out += byte >= 0x20 && byte < 0x7f && byte !== 0x5c ? String.fromCharCode(byte) : `\\x${byte.toString(16).padStart(2, '0')}`;
  }
  return out;
}

function escapeText(text: string): string {
  let out = '';
  for (const ch of text) {
    const code = ch.codePointAt(0)!;
    if (ch === '\\') out += '\\x5c';
    else if (code < 0x80 ? code < 0x20 || code === 0x7f : code === 0xfffd || !isPrintableRune(code)) {
      out += [...Buffer.from(ch, 'utf8')].map((b) => `\\x${b.toString(16).padStart(2, '0')}`).join('');
    } else out += ch;
  }
  // A space at either end is invisible in a line of text (Consul 1.21.6+ refuses such keys).
  return out.replace(/^ | $/g, '\\x20');
}

/** Longest key a line of text shows whole, in characters (a key may have 256 KiB). */
const SHOWN_KEY_MAX = 200;

/**
 * A key as {@link formatKey} shows it, clipped for a line of text or Markdown:
 * its start (where its prefix is) and its length. `--format json` keeps keys
 * whole, for scripts.
 */
export function clipKey(shown: string): string {
  if (shown.length <= SHOWN_KEY_MAX) return shown;
  let head = '';
  for (const ch of shown) {
    if (head.length + ch.length > SHOWN_KEY_MAX - 40) break;
    head += ch;
  }
  // Not inside a \xNN escape.
  head = head.replace(/\\x?[0-9a-f]?$/, '');
  return `${head}… (${shown.length.toLocaleString('en-US')} characters, whole in --format json)`;
}

/**
 * A line of text for a terminal: control characters (but the line breaks and
 * tabs it is laid out with) as `\xNN`, so a value quoted from migration.yaml or
 * a server's answer in a message cannot move the cursor or change colours.
 */
export function terminalSafe(text: string): string {
  return text.replace(/[\x00-\x08\x0b-\x1f\x7f-\x9f]/g, (ch) => `\\x${ch.charCodeAt(0).toString(16).padStart(2, '0')}`);
}
