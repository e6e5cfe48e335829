/*
 * Output writers: text table, JSON, CSV and NDJSON.
 */
#include "mdhunt/output.h"

#include "mdhunt/buf.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SEPARATOR "  "
#define ELLIPSIS "\xe2\x80\xa6"     /* U+2026, one column wide */
#define ESCAPE_MAX 16               /* longest escape: "\u{10FFFF}" */

struct width_range {
    uint32_t first;
    uint32_t last;
};

/*
 * Character widths, generated from the Unicode Character Database 14.0 as
 * shipped with Python 3.11's unicodedata module.  Zero width: general
 * categories Mn and Me, Hangul medial and final jamo U+1160..U+11FF,
 * U+200B..U+200D, U+2060, U+FEFF and the tags U+E0000..U+E007F.  Wide:
 * assigned characters whose East_Asian_Width is W or F, which includes
 * the emoji that default to emoji presentation.  Neighbouring ranges
 * separated only by unassigned code points are merged.
 */
static const struct width_range zero_width_ranges[] = {
    {0x0300, 0x036F}, {0x0483, 0x0489}, {0x0591, 0x05BD}, {0x05BF, 0x05BF},
    {0x05C1, 0x05C2}, {0x05C4, 0x05C5}, {0x05C7, 0x05C7}, {0x0610, 0x061A},
    {0x064B, 0x065F}, {0x0670, 0x0670}, {0x06D6, 0x06DC}, {0x06DF, 0x06E4},
    {0x06E7, 0x06E8}, {0x06EA, 0x06ED}, {0x0711, 0x0711}, {0x0730, 0x074A},
    {0x07A6, 0x07B0}, {0x07EB, 0x07F3}, {0x07FD, 0x07FD}, {0x0816, 0x0819},
    {0x081B, 0x0823}, {0x0825, 0x0827}, {0x0829, 0x082D}, {0x0859, 0x085B},
    {0x0898, 0x089F}, {0x08CA, 0x08E1}, {0x08E3, 0x0902}, {0x093A, 0x093A},
    {0x093C, 0x093C}, {0x0941, 0x0948}, {0x094D, 0x094D}, {0x0951, 0x0957},
    {0x0962, 0x0963}, {0x0981, 0x0981}, {0x09BC, 0x09BC}, {0x09C1, 0x09C4},
    {0x09CD, 0x09CD}, {0x09E2, 0x09E3}, {0x09FE, 0x0A02}, {0x0A3C, 0x0A3C},
    {0x0A41, 0x0A51}, {0x0A70, 0x0A71}, {0x0A75, 0x0A75}, {0x0A81, 0x0A82},
    {0x0ABC, 0x0ABC}, {0x0AC1, 0x0AC8}, {0x0ACD, 0x0ACD}, {0x0AE2, 0x0AE3},
    {0x0AFA, 0x0B01}, {0x0B3C, 0x0B3C}, {0x0B3F, 0x0B3F}, {0x0B41, 0x0B44},
    {0x0B4D, 0x0B56}, {0x0B62, 0x0B63}, {0x0B82, 0x0B82}, {0x0BC0, 0x0BC0},
    {0x0BCD, 0x0BCD}, {0x0C00, 0x0C00}, {0x0C04, 0x0C04}, {0x0C3C, 0x0C3C},
    {0x0C3E, 0x0C40}, {0x0C46, 0x0C56}, {0x0C62, 0x0C63}, {0x0C81, 0x0C81},
    {0x0CBC, 0x0CBC}, {0x0CBF, 0x0CBF}, {0x0CC6, 0x0CC6}, {0x0CCC, 0x0CCD},
    {0x0CE2, 0x0CE3}, {0x0D00, 0x0D01}, {0x0D3B, 0x0D3C}, {0x0D41, 0x0D44},
    {0x0D4D, 0x0D4D}, {0x0D62, 0x0D63}, {0x0D81, 0x0D81}, {0x0DCA, 0x0DCA},
    {0x0DD2, 0x0DD6}, {0x0E31, 0x0E31}, {0x0E34, 0x0E3A}, {0x0E47, 0x0E4E},
    {0x0EB1, 0x0EB1}, {0x0EB4, 0x0EBC}, {0x0EC8, 0x0ECD}, {0x0F18, 0x0F19},
    {0x0F35, 0x0F35}, {0x0F37, 0x0F37}, {0x0F39, 0x0F39}, {0x0F71, 0x0F7E},
    {0x0F80, 0x0F84}, {0x0F86, 0x0F87}, {0x0F8D, 0x0FBC}, {0x0FC6, 0x0FC6},
    {0x102D, 0x1030}, {0x1032, 0x1037}, {0x1039, 0x103A}, {0x103D, 0x103E},
    {0x1058, 0x1059}, {0x105E, 0x1060}, {0x1071, 0x1074}, {0x1082, 0x1082},
    {0x1085, 0x1086}, {0x108D, 0x108D}, {0x109D, 0x109D}, {0x1160, 0x11FF},
    {0x135D, 0x135F}, {0x1712, 0x1714}, {0x1732, 0x1733}, {0x1752, 0x1753},
    {0x1772, 0x1773}, {0x17B4, 0x17B5}, {0x17B7, 0x17BD}, {0x17C6, 0x17C6},
    {0x17C9, 0x17D3}, {0x17DD, 0x17DD}, {0x180B, 0x180D}, {0x180F, 0x180F},
    {0x1885, 0x1886}, {0x18A9, 0x18A9}, {0x1920, 0x1922}, {0x1927, 0x1928},
    {0x1932, 0x1932}, {0x1939, 0x193B}, {0x1A17, 0x1A18}, {0x1A1B, 0x1A1B},
    {0x1A56, 0x1A56}, {0x1A58, 0x1A60}, {0x1A62, 0x1A62}, {0x1A65, 0x1A6C},
    {0x1A73, 0x1A7F}, {0x1AB0, 0x1B03}, {0x1B34, 0x1B34}, {0x1B36, 0x1B3A},
    {0x1B3C, 0x1B3C}, {0x1B42, 0x1B42}, {0x1B6B, 0x1B73}, {0x1B80, 0x1B81},
    {0x1BA2, 0x1BA5}, {0x1BA8, 0x1BA9}, {0x1BAB, 0x1BAD}, {0x1BE6, 0x1BE6},
    {0x1BE8, 0x1BE9}, {0x1BED, 0x1BED}, {0x1BEF, 0x1BF1}, {0x1C2C, 0x1C33},
    {0x1C36, 0x1C37}, {0x1CD0, 0x1CD2}, {0x1CD4, 0x1CE0}, {0x1CE2, 0x1CE8},
    {0x1CED, 0x1CED}, {0x1CF4, 0x1CF4}, {0x1CF8, 0x1CF9}, {0x1DC0, 0x1DFF},
    {0x200B, 0x200D}, {0x2060, 0x2060}, {0x20D0, 0x20F0}, {0x2CEF, 0x2CF1},
    {0x2D7F, 0x2D7F}, {0x2DE0, 0x2DFF}, {0x302A, 0x302D}, {0x3099, 0x309A},
    {0xA66F, 0xA672}, {0xA674, 0xA67D}, {0xA69E, 0xA69F}, {0xA6F0, 0xA6F1},
    {0xA802, 0xA802}, {0xA806, 0xA806}, {0xA80B, 0xA80B}, {0xA825, 0xA826},
    {0xA82C, 0xA82C}, {0xA8C4, 0xA8C5}, {0xA8E0, 0xA8F1}, {0xA8FF, 0xA8FF},
    {0xA926, 0xA92D}, {0xA947, 0xA951}, {0xA980, 0xA982}, {0xA9B3, 0xA9B3},
    {0xA9B6, 0xA9B9}, {0xA9BC, 0xA9BD}, {0xA9E5, 0xA9E5}, {0xAA29, 0xAA2E},
    {0xAA31, 0xAA32}, {0xAA35, 0xAA36}, {0xAA43, 0xAA43}, {0xAA4C, 0xAA4C},
    {0xAA7C, 0xAA7C}, {0xAAB0, 0xAAB0}, {0xAAB2, 0xAAB4}, {0xAAB7, 0xAAB8},
    {0xAABE, 0xAABF}, {0xAAC1, 0xAAC1}, {0xAAEC, 0xAAED}, {0xAAF6, 0xAAF6},
    {0xABE5, 0xABE5}, {0xABE8, 0xABE8}, {0xABED, 0xABED}, {0xFB1E, 0xFB1E},
    {0xFE00, 0xFE0F}, {0xFE20, 0xFE2F}, {0xFEFF, 0xFEFF}, {0x101FD, 0x101FD},
    {0x102E0, 0x102E0}, {0x10376, 0x1037A}, {0x10A01, 0x10A0F},
    {0x10A38, 0x10A3F}, {0x10AE5, 0x10AE6}, {0x10D24, 0x10D27},
    {0x10EAB, 0x10EAC}, {0x10F46, 0x10F50}, {0x10F82, 0x10F85},
    {0x11001, 0x11001}, {0x11038, 0x11046}, {0x11070, 0x11070},
    {0x11073, 0x11074}, {0x1107F, 0x11081}, {0x110B3, 0x110B6},
    {0x110B9, 0x110BA}, {0x110C2, 0x110C2}, {0x11100, 0x11102},
    {0x11127, 0x1112B}, {0x1112D, 0x11134}, {0x11173, 0x11173},
    {0x11180, 0x11181}, {0x111B6, 0x111BE}, {0x111C9, 0x111CC},
    {0x111CF, 0x111CF}, {0x1122F, 0x11231}, {0x11234, 0x11234},
    {0x11236, 0x11237}, {0x1123E, 0x1123E}, {0x112DF, 0x112DF},
    {0x112E3, 0x112EA}, {0x11300, 0x11301}, {0x1133B, 0x1133C},
    {0x11340, 0x11340}, {0x11366, 0x11374}, {0x11438, 0x1143F},
    {0x11442, 0x11444}, {0x11446, 0x11446}, {0x1145E, 0x1145E},
    {0x114B3, 0x114B8}, {0x114BA, 0x114BA}, {0x114BF, 0x114C0},
    {0x114C2, 0x114C3}, {0x115B2, 0x115B5}, {0x115BC, 0x115BD},
    {0x115BF, 0x115C0}, {0x115DC, 0x115DD}, {0x11633, 0x1163A},
    {0x1163D, 0x1163D}, {0x1163F, 0x11640}, {0x116AB, 0x116AB},
    {0x116AD, 0x116AD}, {0x116B0, 0x116B5}, {0x116B7, 0x116B7},
    {0x1171D, 0x1171F}, {0x11722, 0x11725}, {0x11727, 0x1172B},
    {0x1182F, 0x11837}, {0x11839, 0x1183A}, {0x1193B, 0x1193C},
    {0x1193E, 0x1193E}, {0x11943, 0x11943}, {0x119D4, 0x119DB},
    {0x119E0, 0x119E0}, {0x11A01, 0x11A0A}, {0x11A33, 0x11A38},
    {0x11A3B, 0x11A3E}, {0x11A47, 0x11A47}, {0x11A51, 0x11A56},
    {0x11A59, 0x11A5B}, {0x11A8A, 0x11A96}, {0x11A98, 0x11A99},
    {0x11C30, 0x11C3D}, {0x11C3F, 0x11C3F}, {0x11C92, 0x11CA7},
    {0x11CAA, 0x11CB0}, {0x11CB2, 0x11CB3}, {0x11CB5, 0x11CB6},
    {0x11D31, 0x11D45}, {0x11D47, 0x11D47}, {0x11D90, 0x11D91},
    {0x11D95, 0x11D95}, {0x11D97, 0x11D97}, {0x11EF3, 0x11EF4},
    {0x16AF0, 0x16AF4}, {0x16B30, 0x16B36}, {0x16F4F, 0x16F4F},
    {0x16F8F, 0x16F92}, {0x16FE4, 0x16FE4}, {0x1BC9D, 0x1BC9E},
    {0x1CF00, 0x1CF46}, {0x1D167, 0x1D169}, {0x1D17B, 0x1D182},
    {0x1D185, 0x1D18B}, {0x1D1AA, 0x1D1AD}, {0x1D242, 0x1D244},
    {0x1DA00, 0x1DA36}, {0x1DA3B, 0x1DA6C}, {0x1DA75, 0x1DA75},
    {0x1DA84, 0x1DA84}, {0x1DA9B, 0x1DAAF}, {0x1E000, 0x1E02A},
    {0x1E130, 0x1E136}, {0x1E2AE, 0x1E2AE}, {0x1E2EC, 0x1E2EF},
    {0x1E8D0, 0x1E8D6}, {0x1E944, 0x1E94A}, {0xE0000, 0xE01EF},
};
static const struct width_range wide_ranges[] = {
    {0x1100, 0x115F}, {0x231A, 0x231B}, {0x2329, 0x232A}, {0x23E9, 0x23EC},
    {0x23F0, 0x23F0}, {0x23F3, 0x23F3}, {0x25FD, 0x25FE}, {0x2614, 0x2615},
    {0x2648, 0x2653}, {0x267F, 0x267F}, {0x2693, 0x2693}, {0x26A1, 0x26A1},
    {0x26AA, 0x26AB}, {0x26BD, 0x26BE}, {0x26C4, 0x26C5}, {0x26CE, 0x26CE},
    {0x26D4, 0x26D4}, {0x26EA, 0x26EA}, {0x26F2, 0x26F3}, {0x26F5, 0x26F5},
    {0x26FA, 0x26FA}, {0x26FD, 0x26FD}, {0x2705, 0x2705}, {0x270A, 0x270B},
    {0x2728, 0x2728}, {0x274C, 0x274C}, {0x274E, 0x274E}, {0x2753, 0x2755},
    {0x2757, 0x2757}, {0x2795, 0x2797}, {0x27B0, 0x27B0}, {0x27BF, 0x27BF},
    {0x2B1B, 0x2B1C}, {0x2B50, 0x2B50}, {0x2B55, 0x2B55}, {0x2E80, 0x3029},
    {0x302E, 0x303E}, {0x3041, 0x3096}, {0x309B, 0x3247}, {0x3250, 0x4DBF},
    {0x4E00, 0xA4C6}, {0xA960, 0xA97C}, {0xAC00, 0xD7A3}, {0xF900, 0xFAD9},
    {0xFE10, 0xFE19}, {0xFE30, 0xFE6B}, {0xFF01, 0xFF60}, {0xFFE0, 0xFFE6},
    {0x16FE0, 0x16FE3}, {0x16FF0, 0x1B2FB}, {0x1F004, 0x1F004},
    {0x1F0CF, 0x1F0CF}, {0x1F18E, 0x1F18E}, {0x1F191, 0x1F19A},
    {0x1F200, 0x1F320}, {0x1F32D, 0x1F335}, {0x1F337, 0x1F37C},
    {0x1F37E, 0x1F393}, {0x1F3A0, 0x1F3CA}, {0x1F3CF, 0x1F3D3},
    {0x1F3E0, 0x1F3F0}, {0x1F3F4, 0x1F3F4}, {0x1F3F8, 0x1F43E},
    {0x1F440, 0x1F440}, {0x1F442, 0x1F4FC}, {0x1F4FF, 0x1F53D},
    {0x1F54B, 0x1F54E}, {0x1F550, 0x1F567}, {0x1F57A, 0x1F57A},
    {0x1F595, 0x1F596}, {0x1F5A4, 0x1F5A4}, {0x1F5FB, 0x1F64F},
    {0x1F680, 0x1F6C5}, {0x1F6CC, 0x1F6CC}, {0x1F6D0, 0x1F6D2},
    {0x1F6D5, 0x1F6DF}, {0x1F6EB, 0x1F6EC}, {0x1F6F4, 0x1F6FC},
    {0x1F7E0, 0x1F7F0}, {0x1F90C, 0x1F93A}, {0x1F93C, 0x1F945},
    {0x1F947, 0x1F9FF}, {0x1FA70, 0x1FAF6}, {0x20000, 0x3134A},
};

/* Characters and widths */

static int in_ranges(uint32_t cp, const struct width_range *ranges,
                     size_t count)
{
    size_t low = 0;
    size_t high = count;

    if (cp < ranges[0].first || cp > ranges[count - 1].last)
        return 0;
    while (low < high) {
        size_t mid = low + (high - low) / 2;

        if (cp > ranges[mid].last)
            low = mid + 1;
        else if (cp < ranges[mid].first)
            high = mid;
        else
            return 1;
    }
    return 0;
}

static size_t char_width(uint32_t cp)
{
    if (in_ranges(cp, zero_width_ranges,
                  sizeof(zero_width_ranges) / sizeof(zero_width_ranges[0])))
        return 0;
    if (in_ranges(cp, wide_ranges,
                  sizeof(wide_ranges) / sizeof(wide_ranges[0])))
        return 2;
    return 1;
}

/*
 * Decode the UTF-8 character at s[0..len) into *cp and return its length
 * in bytes.  Returns 0 when s does not start a valid sequence, which is
 * the case for a stray continuation byte, a truncated sequence, an
 * overlong form, a surrogate or a code point above U+10FFFF.
 */
static size_t utf8_decode(const unsigned char *s, size_t len, uint32_t *cp)
{
    unsigned char c = s[0];
    unsigned char low = 0x80;    /* allowed range of the second byte */
    unsigned char high = 0xbf;
    size_t n;
    size_t i;
    uint32_t v;

    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        v = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        v = c & 0x0f;
        if (c == 0xe0)
            low = 0xa0;
        else if (c == 0xed)
            high = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        v = c & 0x07;
        if (c == 0xf0)
            low = 0x90;
        else if (c == 0xf4)
            high = 0x8f;
    } else {
        return 0;
    }

    if (len < n || s[1] < low || s[1] > high)
        return 0;
    for (i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    *cp = v;
    return n;
}

/* Bidirectional formatting characters, which can reorder what a terminal
 * shows, and the Unicode line and paragraph separators. */
static int is_invisible_control(uint32_t cp)
{
    return cp == 0x061c || cp == 0x200e || cp == 0x200f ||
           (cp >= 0x202a && cp <= 0x202e) ||
           (cp >= 0x2066 && cp <= 0x2069) ||
           cp == 0x2028 || cp == 0x2029;
}

/*
 * Look at the character at s[0..len) (len > 0) as the table shows it.
 * Returns the number of input bytes it takes and sets *width.  When the
 * character is shown as an escape, esc receives the escape's text
 * (ASCII, so its width is its length) and *esc_len is set; otherwise
 * *esc_len is 0 and the input bytes are shown as they are.
 */
static size_t scan_char(const char *s, size_t len, size_t *width,
                        char *esc, size_t *esc_len)
{
    const unsigned char *u = (const unsigned char *)s;
    uint32_t cp;
    size_t n;
    int letter = -1;

    *esc_len = 0;
    if (u[0] >= 0x20 && u[0] < 0x7f) {
        *width = 1;
        return 1;
    }

    n = utf8_decode(u, len, &cp);
    if (n == 0) {
        snprintf(esc, ESCAPE_MAX, "\\x%02X", u[0]);
        n = 1;
    } else if (cp == 0) {
        letter = '0';
    } else if (cp == '\n') {
        letter = 'n';
    } else if (cp == '\t') {
        letter = 't';
    } else if (cp == '\r') {
        letter = 'r';
    } else if (cp == 0x1b) {
        letter = 'e';
    } else if (cp < 0x20 || cp == 0x7f) {
        snprintf(esc, ESCAPE_MAX, "\\x%02X", (unsigned)cp);
    } else if ((cp >= 0x80 && cp < 0xa0) || is_invisible_control(cp)) {
        snprintf(esc, ESCAPE_MAX, "\\u{%X}", (unsigned)cp);
    } else {
        *width = char_width(cp);
        return n;
    }

    if (letter >= 0) {
        esc[0] = '\\';
        esc[1] = (char)letter;
        esc[2] = '\0';
    }
    *esc_len = strlen(esc);
    *width = *esc_len;
    return n;
}

size_t md_display_width(const char *s, size_t len)
{
    char esc[ESCAPE_MAX];
    size_t esc_len;
    size_t width = 0;
    size_t i = 0;

    while (i < len) {
        size_t w;

        /* Printable ASCII, the common case, is one column a byte. */
        if ((unsigned char)s[i] >= 0x20 && (unsigned char)s[i] < 0x7f) {
            width++;
            i++;
            continue;
        }
        i += scan_char(s + i, len - i, &w, esc, &esc_len);
        width += w;
    }
    return width;
}

/* Writing */

static int put(FILE *out, const char *s, size_t len)
{
    if (len == 0)
        return 0;
    return fwrite(s, 1, len, out) == len ? 0 : -1;
}

static int put_str(FILE *out, const char *s)
{
    return put(out, s, strlen(s));
}

static int put_spaces(FILE *out, size_t count)
{
    static const char spaces[] = "                                ";

    while (count > 0) {
        size_t n = count < sizeof(spaces) - 1 ? count : sizeof(spaces) - 1;

        if (put(out, spaces, n) != 0)
            return -1;
        count -= n;
    }
    return 0;
}

/* Report a failed write, keeping the errno the write set. */
static int write_failed(struct md_error *err)
{
    int saved = errno;

    md_error_set(err, MD_E_INTERNAL,
                 "writing the result failed: %s; check the output file "
                 "and the free disk space", strerror(saved));
    errno = saved;
    return -1;
}

static int flush(FILE *out, struct md_error *err)
{
    if (fflush(out) != 0 || ferror(out))
        return write_failed(err);
    return 0;
}

/* Text table */

/*
 * Show s as the table does, character by character, and stop before the
 * first character that would take the width past budget, so that a cut
 * never splits a character or an escape.  Zero-width characters that
 * follow the last character shown stay with it.  *shown_width receives
 * the width written.
 */
static int put_shown(FILE *out, const char *s, size_t len, size_t budget,
                     size_t *shown_width)
{
    char esc[ESCAPE_MAX];
    size_t esc_len;
    size_t width = 0;
    size_t run = 0;     /* start of the bytes not yet written */
    size_t i = 0;

    while (i < len) {
        size_t w;
        size_t n;

        if ((unsigned char)s[i] >= 0x20 && (unsigned char)s[i] < 0x7f) {
            if (width == budget)
                break;
            width++;
            i++;
            continue;
        }
        n = scan_char(s + i, len - i, &w, esc, &esc_len);
        if (width + w > budget)
            break;
        if (esc_len > 0) {
            if (put(out, s + run, i - run) != 0 ||
                put(out, esc, esc_len) != 0)
                return -1;
            run = i + n;
        }
        width += w;
        i += n;
    }
    *shown_width = width;
    return put(out, s + run, i - run);
}

/*
 * Write one cell of a table line, padded to width; a cell wider than
 * width is cut and ends with an ellipsis.  Spaces are not written at
 * once but added to *pending and written only before the next visible
 * text, so that no line ends in spaces.
 */
static int put_cell(FILE *out, const char *s, size_t len, size_t width,
                    int align_right, size_t *pending)
{
    size_t full = md_display_width(s, len);
    size_t shown_width;

    if (len == 0) {
        *pending += width;
        return 0;
    }

    if (full <= width) {
        if (align_right)
            *pending += width - full;
        if (put_spaces(out, *pending) != 0 ||
            put_shown(out, s, len, full, &shown_width) != 0)
            return -1;
        *pending = align_right ? 0 : width - full;
        return 0;
    }

    if (put_spaces(out, *pending) != 0 ||
        put_shown(out, s, len, width - 1, &shown_width) != 0 ||
        put_str(out, ELLIPSIS) != 0)
        return -1;
    *pending = width - 1 - shown_width;
    return 0;
}

static int is_numeric(enum md_type type)
{
    return type == MD_T_INT || type == MD_T_REAL;
}

/* Width of each column: its widest value or name, at most max_width. */
static void measure_columns(const struct md_table *t, size_t max_width,
                            size_t *widths)
{
    size_t row, col;

    for (col = 0; col < t->ncolumns; col++) {
        const char *name = t->columns[col].name;

        widths[col] = md_display_width(name, strlen(name));
        for (row = 0; row < t->nrows && widths[col] < max_width; row++) {
            const struct md_cell *cell = md_table_cell(t, row, col);
            size_t w = md_display_width(cell->text, cell->len);

            if (w > widths[col])
                widths[col] = w;
        }
        if (widths[col] > max_width)
            widths[col] = max_width;
    }
}

static int write_table_header(FILE *out, const struct md_table *t,
                              const size_t *widths)
{
    size_t col, i;

    size_t pending = 0;

    for (col = 0; col < t->ncolumns; col++) {
        const struct md_column *column = &t->columns[col];

        if (col > 0)
            pending += strlen(SEPARATOR);
        if (put_cell(out, column->name, strlen(column->name), widths[col],
                     is_numeric(column->type), &pending) != 0)
            return -1;
    }
    if (put_str(out, "\n") != 0)
        return -1;

    for (col = 0; col < t->ncolumns; col++) {
        if (col > 0 && put_str(out, SEPARATOR) != 0)
            return -1;
        for (i = 0; i < widths[col]; i++) {
            if (putc('-', out) == EOF)
                return -1;
        }
    }
    return put_str(out, "\n");
}

static int write_table_rows(FILE *out, const struct md_table *t,
                            const size_t *widths)
{
    size_t row, col;

    for (row = 0; row < t->nrows; row++) {
        size_t pending = 0;

        for (col = 0; col < t->ncolumns; col++) {
            const struct md_cell *cell = md_table_cell(t, row, col);

            if (col > 0)
                pending += strlen(SEPARATOR);
            if (put_cell(out, cell->text, cell->len, widths[col],
                         is_numeric(t->columns[col].type), &pending) != 0)
                return -1;
        }
        if (put_str(out, "\n") != 0)
            return -1;
    }
    return 0;
}

static int write_row_count(FILE *out, const struct md_table *t)
{
    if (fprintf(out, "%zu %s", t->nrows, t->nrows == 1 ? "row" : "rows") < 0)
        return -1;
    if (t->truncated &&
        fprintf(out, ", possibly truncated at the service's limit of %d "
                "rows", MD_SERVICE_ROW_LIMIT) < 0)
        return -1;
    return put_str(out, "\n");
}

/* A table without columns shows only its row count. */
static int write_table(FILE *out, const struct md_table *t,
                       size_t max_width, struct md_error *err)
{
    size_t *widths;

    if (t->ncolumns == 0)
        return write_row_count(out, t) != 0 ? write_failed(err) : 0;

    widths = calloc(t->ncolumns, sizeof(*widths));
    if (widths == NULL)
        return md_error_set(err, MD_E_INTERNAL,
                            "out of memory writing the result table");
    measure_columns(t, max_width, widths);

    if (write_table_header(out, t, widths) != 0 ||
        write_table_rows(out, t, widths) != 0 ||
        write_row_count(out, t) != 0) {
        int saved = errno;

        free(widths);
        errno = saved;
        return write_failed(err);
    }
    free(widths);
    return 0;
}

/* JSON and NDJSON */

int md_json_write_string(FILE *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t run = 0;     /* start of the bytes not yet written */
    size_t i = 0;

    if (putc('"', out) == EOF)
        return -1;
    while (i < len) {
        unsigned char c = u[i];
        char buf[8];
        const char *esc = buf;
        size_t n = 1;
        uint32_t cp;

        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            i++;
            continue;
        }
        if (c >= 0x80) {
            n = utf8_decode(u + i, len - i, &cp);
            if (n == 0) {
                esc = "\\ufffd";
                n = 1;
            } else if (cp == 0x2028) {
                esc = "\\u2028";
            } else if (cp == 0x2029) {
                esc = "\\u2029";
            } else {
                i += n;
                continue;
            }
        } else if (c == '"') {
            esc = "\\\"";
        } else if (c == '\\') {
            esc = "\\\\";
        } else if (c == '\n') {
            esc = "\\n";
        } else if (c == '\r') {
            esc = "\\r";
        } else if (c == '\t') {
            esc = "\\t";
        } else if (c == '\b') {
            esc = "\\b";
        } else if (c == '\f') {
            esc = "\\f";
        } else {
            memcpy(buf, "\\u00", 4);
            buf[4] = hex[c >> 4];
            buf[5] = hex[c & 0xf];
            buf[6] = '\0';
        }

        if (put(out, s + run, i - run) != 0 || put_str(out, esc) != 0)
            return -1;
        i += n;
        run = i;
    }
    if (put(out, s + run, len - run) != 0 || putc('"', out) == EOF)
        return -1;
    return 0;
}

/* Write a cell as the JSON type the service sent.  Numbers, booleans,
 * objects and arrays are written from their text, which
 * md_table_set_cell_json() produced as valid JSON. */
static int write_json_value(FILE *out, const struct md_cell *cell)
{
    switch (cell->kind) {
    case MD_J_NULL:
        return put_str(out, "null");
    case MD_J_STRING:
        return md_json_write_string(out, cell->text, cell->len);
    case MD_J_INTEGER:
    case MD_J_REAL:
    case MD_J_BOOL:
    case MD_J_OBJECT:
    case MD_J_ARRAY:
        break;
    }
    return put(out, cell->text, cell->len);
}

static int write_json_row(FILE *out, const struct md_table *t, size_t row)
{
    size_t col;

    if (putc('{', out) == EOF)
        return -1;
    for (col = 0; col < t->ncolumns; col++) {
        const char *name = t->columns[col].name;

        if (col > 0 && putc(',', out) == EOF)
            return -1;
        if (md_json_write_string(out, name, strlen(name)) != 0 ||
            putc(':', out) == EOF ||
            write_json_value(out, md_table_cell(t, row, col)) != 0)
            return -1;
    }
    return putc('}', out) == EOF ? -1 : 0;
}

static int write_ndjson(FILE *out, const struct md_table *t)
{
    size_t row;

    for (row = 0; row < t->nrows; row++) {
        if (write_json_row(out, t, row) != 0 || putc('\n', out) == EOF)
            return -1;
    }
    return 0;
}

static int write_json_member(FILE *out, const char *name, const char *value)
{
    if (fprintf(out, "  \"%s\": ", name) < 0)
        return -1;
    if (value == NULL)
        return put_str(out, "null,\n");
    if (md_json_write_string(out, value, strlen(value)) != 0)
        return -1;
    return put_str(out, ",\n");
}

static int write_json_schema(FILE *out, const struct md_table *t)
{
    size_t col;

    if (put_str(out, "  \"schema\": [") != 0)
        return -1;
    for (col = 0; col < t->ncolumns; col++) {
        const struct md_column *column = &t->columns[col];

        if (put_str(out, col > 0 ? ",\n    " : "\n    ") != 0 ||
            put_str(out, "{\"name\": ") != 0 ||
            md_json_write_string(out, column->name,
                                 strlen(column->name)) != 0 ||
            fprintf(out, ", \"type\": \"%s\", \"service_type\": ",
                    md_type_name(column->type)) < 0 ||
            md_json_write_string(out, column->service_type,
                                 strlen(column->service_type)) != 0 ||
            putc('}', out) == EOF)
            return -1;
    }
    return put_str(out, t->ncolumns > 0 ? "\n  ],\n" : "],\n");
}

/* The document is written piece by piece, one row per line, so that a
 * 100,000-row result never exists as one jansson tree. */
static int write_json(FILE *out, const struct md_table *t,
                      const struct md_output_options *opts)
{
    size_t row;

    if (put_str(out, "{\n") != 0 ||
        write_json_member(out, "format", MD_RESULT_FORMAT) != 0 ||
        write_json_member(out, "backend", opts->backend) != 0 ||
        write_json_member(out, "query_sha256", opts->query_sha256) != 0 ||
        fprintf(out, "  \"truncated\": %s,\n  \"row_count\": %zu,\n",
                t->truncated ? "true" : "false", t->nrows) < 0 ||
        write_json_schema(out, t) != 0 ||
        put_str(out, "  \"rows\": [") != 0)
        return -1;

    for (row = 0; row < t->nrows; row++) {
        if (put_str(out, row > 0 ? ",\n    " : "\n    ") != 0 ||
            write_json_row(out, t, row) != 0)
            return -1;
    }
    return put_str(out, t->nrows > 0 ? "\n  ]\n}\n" : "]\n}\n");
}

/* CSV */

int md_csv_write_field(FILE *out, const char *s, size_t len, int neutralise)
{
    int prefix = neutralise && len > 0 && memchr("=+-@\t\r", s[0], 6);
    int quote = len == 0;
    size_t run = 0;
    size_t i;

    for (i = 0; i < len && !quote; i++) {
        quote = s[i] == ',' || s[i] == '"' || s[i] == '\r' || s[i] == '\n';
    }
    if (!quote && !prefix)
        return put(out, s, len);

    if ((quote && putc('"', out) == EOF) ||
        (prefix && putc('\'', out) == EOF))
        return -1;
    for (i = 0; i < len; i++) {
        if (s[i] != '"')
            continue;
        /* Write up to and including the quote, then the quote again. */
        if (put(out, s + run, i + 1 - run) != 0 || putc('"', out) == EOF)
            return -1;
        run = i + 1;
    }
    if (put(out, s + run, len - run) != 0)
        return -1;
    return quote && putc('"', out) == EOF ? -1 : 0;
}

/* Columns whose values are free text, which a spreadsheet could take for
 * a formula; the other types are checked numbers, times or booleans. */
static int is_text_column(enum md_type type)
{
    return type == MD_T_STRING || type == MD_T_GUID ||
           type == MD_T_DYNAMIC || type == MD_T_UNKNOWN;
}

static int write_csv(FILE *out, const struct md_table *t, int raw)
{
    size_t row, col;

    if (t->ncolumns == 0)
        return 0;

    for (col = 0; col < t->ncolumns; col++) {
        const char *name = t->columns[col].name;

        if ((col > 0 && putc(',', out) == EOF) ||
            md_csv_write_field(out, name, strlen(name), !raw) != 0)
            return -1;
    }
    if (put_str(out, "\r\n") != 0)
        return -1;

    for (row = 0; row < t->nrows; row++) {
        for (col = 0; col < t->ncolumns; col++) {
            const struct md_cell *cell = md_table_cell(t, row, col);
            int neutralise = !raw && cell->kind == MD_J_STRING &&
                             is_text_column(t->columns[col].type);

            if (col > 0 && putc(',', out) == EOF)
                return -1;
            if (cell->kind != MD_J_NULL &&
                md_csv_write_field(out, cell->text, cell->len,
                                   neutralise) != 0)
                return -1;
        }
        if (put_str(out, "\r\n") != 0)
            return -1;
    }
    return 0;
}

/* Formats and the entry point */

static const char *const format_names[] = {
    [MD_FORMAT_TABLE] = "table",
    [MD_FORMAT_JSON] = "json",
    [MD_FORMAT_CSV] = "csv",
    [MD_FORMAT_NDJSON] = "ndjson",
};

void md_output_options_init(struct md_output_options *opts)
{
    memset(opts, 0, sizeof(*opts));
    opts->format = MD_FORMAT_TABLE;
    opts->max_cell_width = MD_OUTPUT_CELL_WIDTH;
}

int md_format_from_name(const char *name, enum md_format *format,
                        struct md_error *err)
{
    size_t i;

    for (i = 0; name != NULL && i < sizeof(format_names) /
                                        sizeof(format_names[0]); i++) {
        if (md_strcasecmp(name, format_names[i]) == 0) {
            *format = (enum md_format)i;
            return 0;
        }
    }
    return md_error_set(err, MD_E_USAGE,
                        "unknown output format \"%s\"; use table, json, "
                        "csv or ndjson", name != NULL ? name : "");
}

const char *md_format_name(enum md_format format)
{
    if ((unsigned)format >= sizeof(format_names) / sizeof(format_names[0]))
        return "unknown";
    return format_names[format];
}

int md_output_write(FILE *out, const struct md_table *t,
                    const struct md_output_options *opts,
                    struct md_error *err)
{
    size_t max_width = opts->max_cell_width;
    int rc = 0;

    if (max_width == 0)
        max_width = MD_OUTPUT_CELL_WIDTH;
    if (max_width < 2)
        max_width = 2;

    switch (opts->format) {
    case MD_FORMAT_TABLE:
        if (write_table(out, t, max_width, err) != 0)
            return -1;
        return flush(out, err);
    case MD_FORMAT_JSON:
        rc = write_json(out, t, opts);
        break;
    case MD_FORMAT_CSV:
        rc = write_csv(out, t, opts->csv_raw);
        break;
    case MD_FORMAT_NDJSON:
        rc = write_ndjson(out, t);
        break;
    default:
        return md_error_set(err, MD_E_INTERNAL, "unknown output format %d",
                            (int)opts->format);
    }
    if (rc != 0)
        return write_failed(err);
    return flush(out, err);
}
