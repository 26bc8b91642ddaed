/*
 * insn_count: a QEMU TCG plugin that counts the guest instructions executed
 * between two addresses, on every vCPU, leaving out the parked cores' spin.
 *
 *   -plugin insn_count.so,start=0x200000,end=0x2012a4,park=0x300-0x32c
 *
 * Counting starts when vCPU 0 first executes `start` and stops when it first
 * executes `end` (exclusive); the result is printed on QEMU's log output
 * (stderr) as soon as `end` is reached, as
 *
 *   zboot-insn-count: start=0x... end=0x... instructions=N
 *   zboot-insn-vcpus: vcpu0=N vcpu1=N vcpu2=N vcpu3=N parked=N
 *
 * and, if `end` was never reached, at exit with `end=unreached` and the counts
 * so far. The split lines below, when asked for, come between these two: the
 * `zboot-insn-vcpus:` line is always the report's last. `instructions` is the work of every vCPU in that window: vCPU 0's
 * exactly (a marker inside a translation block corrects by its position),
 * the others' by whole blocks. Instructions inside a `park=START-END` range
 * (END exclusive; the argument may be given up to 4 times) are not work: they
 * are where the cores nobody has started yet wait (the boot firmware's spin
 * table loop, `wfe` then a load of the core's release address). They are
 * added up apart, as `parked`, the sum over every vCPU.
 *
 * With `ranges=FILE` it also splits the count by where the code lives: FILE
 * has one line per address range, `START END LABEL` (hex addresses, END
 * exclusive, at most 15 labels); instructions outside every range count as
 * `other`. The split is printed next to the count, summed over the vCPUs, and
 * for each vCPU other than 0 that did any work, as
 *
 *   zboot-insn-split: LABEL=N LABEL=N ... other=N
 *   zboot-insn-split-vcpu1: LABEL=N ... other=N
 *
 * A flat profile: an instruction counts for the function it lies in, so
 * code a function inlines counts for that function.
 *
 * Counters are per vCPU, each written only by the thread running that vCPU,
 * so multi-threaded TCG needs no locks; the report reads them with relaxed
 * atomic loads (another vCPU may be a block further on: the split is exact
 * to within a block per vCPU).
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
typedef void (*qemu_plugin_vcpu_simple_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index);

void qemu_plugin_register_vcpu_init_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_simple_cb_t cb);
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

#define MAX_LABELS 16 /* the last one is "other" */
#define OTHER (MAX_LABELS - 1)
#define PARKED MAX_LABELS /* a block's instructions in a parking range */
#define SLOTS (MAX_LABELS + 1)
#define MAX_RANGES 65536
#define MAX_PARKING 4
/* raspi4b has 4 cores; room for boards with more. */
#define MAX_VCPUS 16

struct range {
    uint64_t start;
    uint64_t end;
    unsigned label;
};

static struct range ranges[MAX_RANGES];
static size_t range_count;
static char labels[MAX_LABELS][32];
static unsigned label_count; /* not counting "other" */

static struct range parking[MAX_PARKING];
static size_t parking_count;

/* A translation block: its length, and its instructions per label and in
 * parking ranges. */
struct block_split {
    uint32_t length;
    uint32_t counts[SLOTS];
};

/* Per vCPU, inside the window: instructions per label and parked. */
static uint64_t split[MAX_VCPUS][SLOTS];
/* vCPUs with an index past MAX_VCPUS: not counted, said at the report. */
static bool vcpu_overflow;

static uint64_t start_address;
static uint64_t end_address;
/* Instructions vCPU 0 has executed: whole translation blocks are added when
 * they start, so a marker inside a block corrects by its position. */
static uint64_t executed;
static uint64_t count_at_start;
/* Set by vCPU 0's thread, read by every vCPU's. */
static bool started;
static bool finished;

static uint64_t load(const uint64_t *counter)
{
    return __atomic_load_n(counter, __ATOMIC_RELAXED);
}

/* Only the thread running a vCPU writes its counters: no read-modify-write
 * race, yet the report's loads on another thread are well defined. */
static void add(uint64_t *counter, uint64_t amount)
{
    __atomic_store_n(counter, load(counter) + amount, __ATOMIC_RELAXED);
}

static bool flag(const bool *which)
{
    return __atomic_load_n(which, __ATOMIC_ACQUIRE);
}

static void set_flag(bool *which)
{
    __atomic_store_n(which, true, __ATOMIC_RELEASE);
}

/* A vCPU's work in the window: every label, not the parked instructions. */
static uint64_t work_of(unsigned vcpu)
{
    uint64_t sum = 0;
    for (unsigned slot = 0; slot < MAX_LABELS; slot++) {
        sum += load(&split[vcpu][slot]);
    }
    return sum;
}

/* The vCPUs the machine has (QEMU announces each as it starts), at least 1. */
static unsigned vcpu_count = 1;

static void vcpu_started(qemu_plugin_id_t id, unsigned int vcpu_index)
{
    (void)id;
    if (vcpu_index >= MAX_VCPUS) {
        set_flag(&vcpu_overflow);
    } else if (vcpu_index >= __atomic_load_n(&vcpu_count, __ATOMIC_RELAXED)) {
        /* vCPUs are created one after the other, before the guest runs. */
        __atomic_store_n(&vcpu_count, vcpu_index + 1, __ATOMIC_RELAXED);
    }
}

static unsigned vcpus_seen(void)
{
    return __atomic_load_n(&vcpu_count, __ATOMIC_RELAXED);
}

/* `zboot-insn-split<suffix>:` with `counts` per label. */
static void report_split(const char *suffix, const uint64_t *counts)
{
    char line[1024];
    int used = snprintf(line, sizeof line, "zboot-insn-split%s:", suffix);
    for (unsigned label = 0; label < label_count && used > 0 && (size_t)used < sizeof line;
         label++) {
        used += snprintf(line + used, sizeof line - (size_t)used, " %s=%" PRIu64, labels[label],
                         counts[label]);
    }
    if (used > 0 && (size_t)used < sizeof line) {
        snprintf(line + used, sizeof line - (size_t)used, " other=%" PRIu64 "\n", counts[OTHER]);
    }
    qemu_plugin_outs(line);
}

static void report_splits(void)
{
    uint64_t sums[MAX_LABELS] = {0};
    unsigned seen = vcpus_seen();
    for (unsigned vcpu = 0; vcpu < seen; vcpu++) {
        for (unsigned label = 0; label < MAX_LABELS; label++) {
            sums[label] += load(&split[vcpu][label]);
        }
    }
    report_split("", sums);
    for (unsigned vcpu = 1; vcpu < seen; vcpu++) {
        if (work_of(vcpu) > 0) {
            uint64_t counts[MAX_LABELS];
            char suffix[16];
            for (unsigned label = 0; label < MAX_LABELS; label++) {
                counts[label] = load(&split[vcpu][label]);
            }
            snprintf(suffix, sizeof suffix, "-vcpu%u", vcpu);
            report_split(suffix, counts);
        }
    }
}

/* The count, the split when there are ranges, then the per-vCPU line last (a
 * reader polling the log knows the report is complete once it sees that one).
 * vCPU 0's exact count is `vcpu0_total` (parked instructions included); every
 * other vCPU's is its block-granular split. */
static void report(const char *end_text, uint64_t vcpu0_total, bool with_split)
{
    char line[512];
    uint64_t parked = 0;
    uint64_t vcpu0 = vcpu0_total - (load(&split[0][PARKED]) < vcpu0_total
                                        ? load(&split[0][PARKED])
                                        : vcpu0_total);
    uint64_t total = vcpu0;
    unsigned seen = vcpus_seen();
    int used;
    for (unsigned vcpu = 0; vcpu < seen; vcpu++) {
        parked += load(&split[vcpu][PARKED]);
        if (vcpu > 0) {
            total += work_of(vcpu);
        }
    }
    snprintf(line, sizeof line,
             "zboot-insn-count: start=0x%" PRIx64 " end=%s instructions=%" PRIu64 "\n",
             start_address, end_text, total);
    qemu_plugin_outs(line);
    if (with_split) {
        report_splits();
    }
    used = snprintf(line, sizeof line, "zboot-insn-vcpus: vcpu0=%" PRIu64, vcpu0);
    for (unsigned vcpu = 1; vcpu < seen && used > 0 && (size_t)used < sizeof line; vcpu++) {
        used += snprintf(line + used, sizeof line - (size_t)used, " vcpu%u=%" PRIu64, vcpu,
                         work_of(vcpu));
    }
    if (used > 0 && (size_t)used < sizeof line) {
        snprintf(line + used, sizeof line - (size_t)used, " parked=%" PRIu64 "%s\n", parked,
                 flag(&vcpu_overflow) ? " (vCPUs past the plugin's limit were not counted)" : "");
    }
    qemu_plugin_outs(line);
}

static void block_executed(unsigned int vcpu_index, void *userdata)
{
    const struct block_split *block = userdata;
    if (vcpu_index == 0) {
        executed += block->length;
    }
    if (!flag(&started) || flag(&finished)) {
        return;
    }
    if (vcpu_index >= MAX_VCPUS) {
        set_flag(&vcpu_overflow);
        return;
    }
    for (unsigned slot = 0; slot < SLOTS; slot++) {
        if (block->counts[slot] != 0) {
            add(&split[vcpu_index][slot], block->counts[slot]);
        }
    }
}

/* The label of the range holding `address` (ranges are sorted, disjoint). */
static unsigned label_of(uint64_t address)
{
    size_t low = 0;
    size_t high = range_count;
    for (size_t index = 0; index < parking_count; index++) {
        if (address >= parking[index].start && address < parking[index].end) {
            return PARKED;
        }
    }
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
    return OTHER;
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
    if (vcpu_index == 0 && !flag(&started)) {
        count_at_start = count_before(userdata);
        set_flag(&started);
    }
}

static void end_reached(unsigned int vcpu_index, void *userdata)
{
    if (vcpu_index == 0 && flag(&started) && !flag(&finished)) {
        char end_text[32];
        set_flag(&finished);
        snprintf(end_text, sizeof end_text, "0x%" PRIx64, end_address);
        report(end_text, count_before(userdata) - count_at_start, range_count > 0);
    }
}

static void block_translated(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t length = qemu_plugin_tb_n_insns(tb);
    /* Lives as long as the translation may run: never freed (a few
     * thousand blocks per run). */
    struct block_split *block = calloc(1, sizeof *block);
    (void)id;
    if (block == NULL) {
        /* A count that silently missed blocks would mislead: stop. */
        fprintf(stderr, "insn_count: out of memory\n");
        abort();
    }
    block->length = (uint32_t)length;
    for (size_t index = 0; index < length; index++) {
        uint64_t address = qemu_plugin_insn_vaddr(qemu_plugin_tb_get_insn(tb, index));
        block->counts[label_of(address)]++;
    }
    qemu_plugin_register_vcpu_tb_exec_cb(tb, block_executed, QEMU_PLUGIN_CB_NO_REGS, block);
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
    if (!flag(&finished)) {
        report("unreached", flag(&started) ? executed - count_at_start : 0, false);
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

/* `park=START-END`; false if `arg` is not one. */
static bool parse_parking(const char *arg, struct range *out)
{
    char *rest;
    if (strncmp(arg, "park=", 5) != 0) {
        return false;
    }
    out->start = strtoull(arg + 5, &rest, 0);
    if (*rest != '-') {
        return false;
    }
    out->end = strtoull(rest + 1, &rest, 0);
    return *rest == '\0' && out->end > out->start;
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    bool have_start = false;
    bool have_end = false;
    (void)info;
    for (int i = 0; i < argc; i++) {
        struct range parked;
        if (parse_address(argv[i], "start", &start_address)) {
            have_start = true;
        } else if (parse_address(argv[i], "end", &end_address)) {
            have_end = true;
        } else if (strncmp(argv[i], "ranges=", 7) == 0) {
            if (!load_ranges(argv[i] + 7)) {
                return -1;
            }
        } else if (parse_parking(argv[i], &parked) && parking_count < MAX_PARKING) {
            parking[parking_count++] = parked;
        } else {
            fprintf(stderr, "insn_count: unknown, malformed or one too many argument '%s'\n",
                    argv[i]);
            return -1;
        }
    }
    if (!have_start || !have_end) {
        fprintf(stderr, "insn_count: needs start=ADDRESS and end=ADDRESS\n");
        return -1;
    }
    qemu_plugin_register_vcpu_init_cb(id, vcpu_started);
    qemu_plugin_register_vcpu_tb_trans_cb(id, block_translated);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
