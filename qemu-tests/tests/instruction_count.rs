//! The benchmark's instruction counter works on the loader it measures.

use zboot_qemu_tests::insn_count::plugin_arguments;
use zboot_qemu_tests::{
    Ending, Icount, LoaderBuild, LoaderImage, Qemu, insn_count_plugin, minimal_dtb,
};

#[test]
fn plugin_counts_vcpu0_instructions_from_entry_to_the_marker() {
    let loader = LoaderImage::get(LoaderBuild::QemuTest).expect("building the loader");
    let plugin = insn_count_plugin().expect("building the plugin");
    let start = loader.symbol("_start").unwrap();
    let end = loader.symbol("zboot_bench_marker").unwrap();
    assert_eq!(start, loader.load_address);
    let count = |icount| {
        let run = Qemu::new(&loader.image)
            .dtb(&minimal_dtb().unwrap())
            .plugin(&plugin, &plugin_arguments(start, end, None))
            .icount(icount)
            .run()
            .expect("running QEMU");
        // No card is attached: the test build ends with "nothing to boot" (3).
        assert_eq!(run.ending, Ending::Exited(3), "console:\n{}", run.console);
        let report = run
            .insn_report()
            .unwrap_or_else(|| panic!("no count in:\n{}", run.qemu_log));
        // Cores 1-3 stay parked in QEMU's boot stub: whatever they spin there is left
        // out (under single-threaded TCG they get few turns), so the count is vCPU 0's.
        // Work on a parked core means the stub is not where the plugin is told it is.
        assert_eq!(report.per_vcpu.len(), 4, "{}", run.qemu_log);
        assert_eq!(report.busiest_other(), None, "{}", run.qemu_log);
        assert_eq!(report.instructions, report.vcpu0());
        report.instructions
    };
    let work = count(Icount::Work);
    // Start-up is tens of thousands of instructions; far less means the
    // markers were missed, far more that counting ran on past them.
    assert!(
        (10_000..2_000_000).contains(&work),
        "implausible count {work}"
    );
    // Under -icount the same binary does the same work: the count repeats.
    assert_eq!(count(Icount::Work), work, "icount work counts are exact");
    // With 1 insn = 1 ns, busy-waits cost instructions too: never fewer.
    assert!(count(Icount::Realtime) >= work);
}
