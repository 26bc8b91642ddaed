/*
 * insn_count: a QEMU TCG plugin that counts the guest instructions vCPU 0
 * executes between two addresses.
 *
 *   -plugin insn_count.so,start=0x200000,end=0x2012a4
 *
 * Counting starts when vCPU 0 first executes `start` and stops when it first
 * executes `end` (exclusive); the result is printed on QEMU's log output
 * (stderr) as soon as `end` is reached, as
 *
 *   zboot-insn-count: start=0x... end=0x... instructions=N
 *
 * and, if `end` was never reached, at exit with `end=unreached` and the count
 * so far. Only vCPU 0 is counted: the other cores spin in the firmware's
 * parking loop.
 *
 * With `ranges=FILE` it also splits the count by where the code lives: FILE
 * has one line per address range, `START END LABEL` (hex addresses, END
 * exclusive, at most 7 labels); instructions outside every range count as
 * `other`. The split is printed next to the count as
 *
 *   zboot-insn-split: LABEL=N LABEL=N ... other=N
 *
 * A flat profile: an instruction counts for the function it lies in, so
 * code a function inlines counts for that function.
 *
 * QEMU installs no plugin header in Debian's packages, so the handful of
 * API declarations used here are written out below. They follow the plugin
 * API as documented in QEMU's docs/devel/tcg-plugins.rst (API versions 2..4
 * share these entry points and their signatures).
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef struct qemu_info_t qemu_info_t;

enum qemu_plugin_cb_flags {
    QEMU_PLUGIN_CB_NO_REGS,
    QEMU_PLUGIN_CB_R_REGS,
    QEMU_PLUGIN_CB_RW_REGS,
};

typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn,
                                            qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_outs(const char *string);

#define EXPORT __attribute__((visibility("default")))

/* The API version this plugin was written against (QEMU accepts a range). */
EXPORT int qemu_plugin_version = 2;

#define MAX_LABELS 8 /* the last one is "other" */
#define MAX_RANGES 65536

struct range {
    uint64_t start;
    uint64_t end;
    unsigned label;
};

static struct range ranges[MAX_RANGES];
static size_t range_count;
static char labels[MAX_LABELS][32];
static unsigned label_count; /* not counting "other" */
static uint64_t split[MAX_LABELS];

/* A translation block's instructions per label. */
struct block_split {
    uint32_t counts[MAX_LABELS];
};

static uint64_t start_address;
static uint64_t end_address;
/* Instructions vCPU 0 has executed: whole translation blocks are added when
 * they start, so a marker inside a block corrects by its position. */
static uint64_t executed;
static uint64_t count_at_start;
static bool started;
static bool finished;

static void report(const char *end_text, uint64_t instructions)
{
    char line[160];
    snprintf(line, sizeof line,
             "zboot-insn-count: start=0x%" PRIx64 " end=%s instructions=%" PRIu64 "\n",
             start_address, end_text, instructions);
    qemu_plugin_outs(line);
}

static void block_executed(unsigned int vcpu_index, void *userdata)
{
    if (vcpu_index == 0) {
        executed += (uintptr_t)userdata;
    }
}

static void block_split_executed(unsigned int vcpu_index, void *userdata)
{
    const struct block_split *block = userdata;
    if (vcpu_index != 0 || !started || finished) {
        return;
    }
    for (unsigned label = 0; label < MAX_LABELS; label++) {
        split[label] += block->counts[label];
    }
}

/* The label of the range holding `address` (ranges are sorted, disjoint). */
static unsigned label_of(uint64_t address)
{
    size_t low = 0;
    size_t high = range_count;
    while (low < high) {
        size_t middle = low + (high - low) / 2;
        if (address < ranges[middle].start) {
            high = middle;
        } else if (address >= ranges[middle].end) {
            low = middle + 1;
        } else {
            return ranges[middle].label;
        }
    }
    return MAX_LABELS - 1;
}

static void report_split(void)
{
    char line[512];
    int used = snprintf(line, sizeof line, "zboot-insn-split:");
    for (unsigned label = 0; label < label_count && used > 0 && (size_t)used < sizeof line;
         label++) {
        used += snprintf(line + used, sizeof line - (size_t)used, " %s=%" PRIu64, labels[label],
                         split[label]);
    }
    if (used > 0 && (size_t)used < sizeof line) {
        snprintf(line + used, sizeof line - (size_t)used, " other=%" PRIu64 "\n",
                 split[MAX_LABELS - 1]);
    }
    qemu_plugin_outs(line);
}

/* userdata packs the instruction's index in its block (low 16 bits) and the
 * block length (next 16 bits): the count before this instruction is
 * executed - length + index. */
static uint64_t count_before(void *userdata)
{
    uintptr_t packed = (uintptr_t)userdata;
    return executed - ((packed >> 16) & 0xffff) + (packed & 0xffff);
}

static void start_reached(unsigned int vcpu_index, void *userdata)
{
    if (vcpu_index == 0 && !started) {
        started = true;
        count_at_start = count_before(userdata);
    }
}

static void end_reached(unsigned int vcpu_index, void *userdata)
{
    if (vcpu_index == 0 && started && !finished) {
        char end_text[32];
        finished = true;
        snprintf(end_text, sizeof end_text, "0x%" PRIx64, end_address);
        report(end_text, count_before(userdata) - count_at_start);
        if (range_count > 0) {
            report_split();
        }
    }
}

static void block_translated(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t length = qemu_plugin_tb_n_insns(tb);
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_cb(tb, block_executed, QEMU_PLUGIN_CB_NO_REGS,
                                         (void *)(uintptr_t)length);
    if (range_count > 0) {
        /* Lives as long as the translation may run: never freed (a few
         * thousand blocks per run). */
        struct block_split *block = calloc(1, sizeof *block);
        if (block != NULL) {
            for (size_t index = 0; index < length; index++) {
                uint64_t address = qemu_plugin_insn_vaddr(qemu_plugin_tb_get_insn(tb, index));
                block->counts[label_of(address)]++;
            }
            qemu_plugin_register_vcpu_tb_exec_cb(tb, block_split_executed,
                                                 QEMU_PLUGIN_CB_NO_REGS, block);
        }
    }
    for (size_t index = 0; index < length && index < 0x10000; index++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, index);
        uint64_t address = qemu_plugin_insn_vaddr(insn);
        void *packed = (void *)(uintptr_t)((length << 16) | index);
        if (address == start_address) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, start_reached, QEMU_PLUGIN_CB_NO_REGS,
                                                   packed);
        }
        if (address == end_address) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, end_reached, QEMU_PLUGIN_CB_NO_REGS,
                                                   packed);
        }
    }
}

static void at_exit(qemu_plugin_id_t id, void *userdata)
{
    (void)id;
    (void)userdata;
    if (!finished) {
        report("unreached", started ? executed - count_at_start : 0);
    }
}

static int compare_ranges(const void *a, const void *b)
{
    const struct range *left = a;
    const struct range *right = b;
    return left->start < right->start ? -1 : left->start > right->start;
}

/* Reads `START END LABEL` lines; returns false (after saying why) on error. */
static bool load_ranges(const char *path)
{
    FILE *file = fopen(path, "r");
    char label[32];
    uint64_t start;
    uint64_t end;
    if (file == NULL) {
        fprintf(stderr, "insn_count: cannot open ranges file '%s'\n", path);
        return false;
    }
    while (fscanf(file, "%" SCNx64 " %" SCNx64 " %31s", &start, &end, label) == 3) {
        unsigned index = 0;
        while (index < label_count && strcmp(labels[index], label) != 0) {
            index++;
        }
        if (index == label_count) {
            if (label_count == MAX_LABELS - 1) {
                fprintf(stderr, "insn_count: more than %d labels in '%s'\n", MAX_LABELS - 1,
                        path);
                fclose(file);
                return false;
            }
            snprintf(labels[label_count++], sizeof labels[0], "%s", label);
        }
        if (range_count == MAX_RANGES || end <= start) {
            fprintf(stderr, "insn_count: too many ranges or an empty one in '%s'\n", path);
            fclose(file);
            return false;
        }
        ranges[range_count++] = (struct range){start, end, index};
    }
    fclose(file);
    qsort(ranges, range_count, sizeof ranges[0], compare_ranges);
    return true;
}

static bool parse_address(const char *arg, const char *key, uint64_t *out)
{
    size_t key_length = strlen(key);
    char *rest;
    if (strncmp(arg, key, key_length) != 0 || arg[key_length] != '=') {
        return false;
    }
    *out = strtoull(arg + key_length + 1, &rest, 0);
    return *rest == '\0';
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    bool have_start = false;
    bool have_end = false;
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (parse_address(argv[i], "start", &start_address)) {
            have_start = true;
        } else if (parse_address(argv[i], "end", &end_address)) {
            have_end = true;
        } else if (strncmp(argv[i], "ranges=", 7) == 0) {
            if (!load_ranges(argv[i] + 7)) {
                return -1;
            }
        } else {
            fprintf(stderr, "insn_count: unknown or malformed argument '%s'\n", argv[i]);
            return -1;
        }
    }
    if (!have_start || !have_end) {
        fprintf(stderr, "insn_count: needs start=ADDRESS and end=ADDRESS\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, block_translated);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
