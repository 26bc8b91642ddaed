//! One QEMU `raspi4b` run: command line, console capture, QMP events, deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::build::Tools;

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The guest exited through semihosting (or QEMU quit) with this status.
    Exited(i32),
    /// The guest reset the board; `-no-reboot` turned that into a QEMU exit.
    GuestReset,
    /// The console printed the text the run was told to stop at.
    StopText,
    /// The deadline passed and the harness killed QEMU.
    TimedOut,
}

/// `-icount` modes for exact instruction-driven time (see DESIGN.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Icount {
    /// `shift=10,sleep=off`: each instruction advances the clock 1024 ns, so
    /// waits cost almost no instructions: the count measures work.
    Work,
    /// `shift=0,sleep=off`: 1 instruction = 1 ns, so busy-waits count too.
    Realtime,
}

/// What a run produced.
#[derive(Debug)]
pub struct Run {
    pub ending: Ending,
    /// Everything the guest printed on the PL011.
    pub console: String,
    /// QEMU's own stderr (plugin output, errors).
    pub qemu_log: String,
    pub wall_time: Duration,
}

impl Run {
    /// Whether the console contains `text`.
    pub fn console_has(&self, text: &str) -> bool {
        self.console.contains(text)
    }

    /// Everything the `insn_count` plugin reported, once it reached its end marker.
    pub fn insn_report(&self) -> Option<crate::insn_count::InsnReport> {
        crate::insn_count::InsnReport::parse(&self.qemu_log)
    }

    /// The instruction count the `insn_count` plugin printed, if it did: the work of
    /// every vCPU (see [`crate::insn_count`]).
    pub fn instruction_count(&self) -> Option<u64> {
        self.qemu_log.lines().find_map(|line| {
            let rest = line.strip_prefix("zboot-insn-count: ")?;
            if rest.contains("end=unreached") {
                return None;
            }
            rest.split_whitespace()
                .find_map(|field| field.strip_prefix("instructions="))
                .and_then(|count| count.parse().ok())
        })
    }
}

/// What a test prints for a run (cargo shows it when the test fails).
impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "--- console ({:?}, {:.1} s) ---\n{}",
            self.ending,
            self.wall_time.as_secs_f64(),
            self.console
        )?;
        write!(f, "--- QEMU log ---\n{}", self.qemu_log)
    }
}

/// A QEMU `raspi4b` invocation, built up and then [`run`](Qemu::run).
#[derive(Debug, Clone)]
pub struct Qemu {
    kernel: PathBuf,
    dtb: Option<PathBuf>,
    append: Option<String>,
    emmc: Option<PathBuf>,
    sd_card: bool,
    boot_partitions: Option<(u64, u8)>,
    usb_stick: Option<PathBuf>,
    extra_args: Vec<String>,
    blobs: Vec<(PathBuf, u64)>,
    plugin: Option<(PathBuf, String)>,
    icount: Option<Icount>,
    timeout: Duration,
    stop_text: Option<String>,
    qmp_commands: Vec<(String, String)>,
    gpios_high: Vec<u8>,
    echo: bool,
    emmc2_adma2: bool,
}

/// EMMC2's capabilities with ADMA2 advertised, as on the real BCM2711 (Linux reports it
/// "using ADMA"): QEMU raspi4b's `0x052134b4` plus ADMA2 (bit 19) and SDMA (bit 22,
/// without which QEMU's `sdhci.c` drops Transfer Mode's DMA Enable). Set through the
/// patched QEMU's `bcm2838-peripherals.emmc2-capareg` (`scripts/build-qemu`).
pub const EMMC2_ADMA2_CAPABILITIES: u32 = 0x0521_34b4 | (1 << 19) | (1 << 22);

/// Set (to anything) to run every [`Qemu`] with [`Qemu::emmc2_adma2`]: whole test files
/// then exercise ADMA2 (`ZBOOT_QEMU_EMMC2_ADMA2=1 cargo test -p zboot-qemu-tests --test
/// slots`).
pub const EMMC2_ADMA2_VARIABLE: &str = "ZBOOT_QEMU_EMMC2_ADMA2";

impl Qemu {
    /// A run of `kernel` (a zboot image) with no disks and a one-minute deadline.
    pub fn new(kernel: &Path) -> Self {
        Self {
            kernel: kernel.to_path_buf(),
            dtb: None,
            append: None,
            emmc: None,
            sd_card: false,
            boot_partitions: None,
            usb_stick: None,
            extra_args: Vec::new(),
            blobs: Vec::new(),
            plugin: None,
            icount: None,
            timeout: Duration::from_mins(1),
            stop_text: None,
            qmp_commands: Vec::new(),
            gpios_high: Vec::new(),
            echo: false,
            emmc2_adma2: std::env::var_os(EMMC2_ADMA2_VARIABLE).is_some(),
        }
    }

    /// Make EMMC2 advertise ADMA2 ([`EMMC2_ADMA2_CAPABILITIES`]): zboot then moves block
    /// data by ADMA2 if the DTB's `emmc2bus` gives it a window (the minimal tree's is
    /// the C0 one, which QEMU's 1:1 DMA serves). Off by default, as in stock QEMU.
    #[must_use]
    pub fn emmc2_adma2(mut self) -> Self {
        self.emmc2_adma2 = true;
        self
    }

    /// Pass a device tree (`-dtb`): x0 at entry then points at it.
    #[must_use]
    pub fn dtb(mut self, dtb: &Path) -> Self {
        self.dtb = Some(dtb.to_path_buf());
        self
    }

    /// Set `/chosen/bootargs` in the DTB (`-append`).
    #[must_use]
    pub fn append(mut self, command_line: &str) -> Self {
        self.append = Some(command_line.to_owned());
        self
    }

    /// Attach a raw image as the card on EMMC2: by default QEMU's soldered eMMC model
    /// (`-device emmc`, user-creatable in the patched QEMU, whose EXT_CSD also offers
    /// DDR52: `scripts/build-qemu`), as on a CM4: CMD1, EXT_CSD, the 8-bit bus.
    #[must_use]
    pub fn emmc(mut self, image: &Path) -> Self {
        self.emmc = Some(image.to_path_buf());
        self
    }

    /// Model the card as an SD card instead (`-device sd-card`), as on a CM4 Lite
    /// with a card in its slot: CMD8, ACMD41, the 4-bit bus.
    #[must_use]
    pub fn sd_card(mut self) -> Self {
        self.sd_card = true;
        self
    }

    /// Give the eMMC model two boot partitions of `bytes` each (a multiple of
    /// 128 KiB) and EXT_CSD PARTITION_CONFIG `config` (QEMU's `boot-partition-size`
    /// and `boot-config`). QEMU keeps boot0 and boot1 at the start of the backing
    /// file: the image's user area must start at byte `2 × bytes`.
    #[must_use]
    pub fn emmc_boot_partitions(mut self, bytes: u64, config: u8) -> Self {
        self.boot_partitions = Some((bytes, config));
        self
    }

    /// Attach a raw image as a USB mass-storage stick on the DWC2 port.
    #[must_use]
    pub fn usb_stick(mut self, image: &Path) -> Self {
        self.usb_stick = Some(image.to_path_buf());
        self
    }

    /// Extra QEMU arguments, placed before the USB stick's (e.g. explicit
    /// `-device usb-hub` so the stick can go behind them).
    #[must_use]
    pub fn extra_args(mut self, arguments: &[&str]) -> Self {
        self.extra_args
            .extend(arguments.iter().map(|argument| (*argument).to_owned()));
        self
    }

    /// Place a file's bytes in guest RAM at `address` before the guest starts
    /// (QEMU's generic `loader` device).
    #[must_use]
    pub fn load_blob(mut self, file: &Path, address: u64) -> Self {
        self.blobs.push((file.to_path_buf(), address));
        self
    }

    /// Load a TCG plugin with its comma-separated arguments.
    #[must_use]
    pub fn plugin(mut self, plugin: &Path, arguments: &str) -> Self {
        self.plugin = Some((plugin.to_path_buf(), arguments.to_owned()));
        self
    }

    /// Run with `-icount` instead of free-running TCG time.
    #[must_use]
    pub fn icount(mut self, mode: Icount) -> Self {
        self.icount = Some(mode);
        self
    }

    /// Kill QEMU after this long.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Stop the run once the console shows `text` (for builds that halt).
    #[must_use]
    pub fn stop_at(mut self, text: &str) -> Self {
        self.stop_text = Some(text.to_owned());
        self
    }

    /// Send `command` (one QMP command as JSON, e.g. `{"execute":"device_del",
    /// "arguments":{"id":"stick"}}`) once the console shows `console_text`.
    /// Several are sent in the order given: the text of each is looked for
    /// only in what the console prints after the previous one was sent.
    /// QMP's replies that report an error end up in the run's QEMU log.
    #[must_use]
    pub fn qmp_when(mut self, console_text: &str, command: &str) -> Self {
        self.qmp_commands
            .push((console_text.to_owned(), command.to_owned()));
        self
    }

    /// Holds GPIO `pin` high from power-on, as a button or jumper to 3.3 V
    /// would. QEMU models no input pins, but its GPIO block reports the
    /// level last set through GPSETn for any pin (hw/gpio/bcm2838_gpio.c),
    /// and a device reset clears it; so the run starts stopped (`-S`), the
    /// bit is written to GPSETn through QEMU's qtest port, and QMP `cont`
    /// starts the guest.
    #[must_use]
    pub fn gpio_high(mut self, pin: u8) -> Self {
        self.gpios_high.push(pin);
        self
    }

    /// Copy the console to our stdout as it arrives (demo, debugging).
    #[must_use]
    pub fn echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    fn command(&self, qemu: &Path, qmp_socket: &Path, qtest_socket: &Path) -> Command {
        let mut command = Command::new(qemu);
        command.args(["-M", "raspi4b", "-display", "none", "-monitor", "none"]);
        command.args(["-serial", "stdio", "-semihosting", "-no-reboot"]);
        match self.icount {
            // -icount implies single-threaded TCG.
            Some(Icount::Work) => command.args(["-icount", "shift=10,sleep=off"]),
            Some(Icount::Realtime) => command.args(["-icount", "shift=0,sleep=off"]),
            // Single-threaded TCG: the parked cores spin on `wfe`, and with
            // one thread per vCPU they steal the host's two cores.
            None => command.args(["-accel", "tcg,thread=single"]),
        };
        command.arg("-kernel").arg(&self.kernel);
        if self.emmc2_adma2 {
            command.arg("-global").arg(format!(
                "bcm2838-peripherals.emmc2-capareg=0x{EMMC2_ADMA2_CAPABILITIES:08x}"
            ));
        }
        if let Some(dtb) = &self.dtb {
            command.arg("-dtb").arg(dtb);
        }
        if let Some(append) = &self.append {
            command.arg("-append").arg(append);
        }
        if let Some(emmc) = &self.emmc {
            command.arg("-drive").arg(format!(
                "if=none,id=card,format=raw,file={}",
                emmc.display()
            ));
            let model = if self.sd_card { "sd-card" } else { "emmc" };
            let mut device = format!("{model},drive=card,bus=/generic-sdhci/sd-bus");
            if let (false, Some((bytes, config))) = (self.sd_card, self.boot_partitions) {
                device = format!("{device},boot-partition-size={bytes},boot-config={config}");
            }
            command.args(["-device", &device]);
        }
        command.args(&self.extra_args);
        if let Some(stick) = &self.usb_stick {
            command.arg("-drive").arg(format!(
                "if=none,id=stick,format=raw,file={}",
                stick.display()
            ));
            command.args(["-device", "usb-storage,drive=stick"]);
        }
        for (file, address) in &self.blobs {
            command.arg("-device").arg(format!(
                "loader,file={},addr=0x{address:x},force-raw=on",
                file.display()
            ));
        }
        if let Some((plugin, arguments)) = &self.plugin {
            let mut spec = plugin.display().to_string();
            if !arguments.is_empty() {
                spec.push(',');
                spec.push_str(arguments);
            }
            // Plugin output goes through QEMU's log, enabled by `-d plugin`.
            command.arg("-plugin").arg(spec).args(["-d", "plugin"]);
        }
        command.arg("-chardev").arg(format!(
            "socket,id=qmp,path={},server=on,wait=on",
            qmp_socket.display()
        ));
        command.args(["-mon", "chardev=qmp,mode=control"]);
        if !self.gpios_high.is_empty() {
            command
                .arg("-S")
                .arg("-qtest")
                .arg(format!("unix:{}", qtest_socket.display()));
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs QEMU to its end and collects what it printed.
    pub fn run(&self) -> Result<Run> {
        let qemu = Tools::qemu()?;
        let scratch = tempfile::tempdir().context("creating a scratch directory")?;
        let qmp_socket = scratch.path().join("qmp.sock");
        let qtest_socket = scratch.path().join("qtest.sock");
        // QEMU connects to the qtest socket as a client.
        let qtest_listener = if self.gpios_high.is_empty() {
            None
        } else {
            Some(UnixListener::bind(&qtest_socket).context("listening for QEMU's qtest port")?)
        };
        let started = Instant::now();
        let mut child = self
            .command(&qemu, &qmp_socket, &qtest_socket)
            .spawn()
            .context("starting qemu-system-aarch64")?;

        let (events, event_receiver) = mpsc::channel::<Event>();
        let stdout = child.stdout.take().context("qemu stdout")?;
        let stderr = child.stderr.take().context("qemu stderr")?;
        let console_thread = spawn_console_reader(stdout, events, self.echo);
        let log_thread = thread::spawn(move || {
            let mut log = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut log);
            log
        });

        // QEMU waits for the QMP client before it starts the guest, so no
        // event can be missed.
        let qmp = match connect_qmp(&qmp_socket, &mut child, started + Duration::from_secs(20)) {
            Ok(qmp) => qmp,
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = log_thread.join().unwrap_or_default();
                return Err(error.context(format!("QEMU did not start; its log:\n{log}")));
            }
        };
        // Commands go out on a second handle to the same socket while the
        // reader thread consumes events and replies.
        let mut qmp_writer = qmp.try_clone().context("cloning the QMP socket")?;
        let qmp_thread = spawn_qmp_reader(qmp);
        if let Some(listener) = qtest_listener
            && let Err(error) = self.set_gpios(&listener, &mut qmp_writer, started)
        {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error);
        }

        let mut ending =
            self.wait_for_end(&mut child, &event_receiver, started, &mut qmp_writer)?;
        // The SHUTDOWN event precedes QEMU's exit; the QMP reader has seen it
        // once the socket closes.
        let (guest_reset, qmp_errors) = qmp_thread.join().unwrap_or_default();
        if guest_reset && matches!(ending, Ending::Exited(_)) {
            ending = Ending::GuestReset;
        }
        let console = console_thread.join().unwrap_or_default();
        let mut qemu_log = log_thread.join().unwrap_or_default();
        for error in qmp_errors {
            qemu_log.push_str("QMP error reply: ");
            qemu_log.push_str(&error);
            qemu_log.push('\n');
        }
        Ok(Run {
            ending,
            console,
            qemu_log,
            wall_time: started.elapsed(),
        })
    }

    /// Sets the [`Qemu::gpio_high`] pins through qtest, then starts the guest.
    fn set_gpios(
        &self,
        listener: &UnixListener,
        qmp: &mut UnixStream,
        started: Instant,
    ) -> Result<()> {
        // GPSET0/GPSET1 (BCM2711 ARM Peripherals §5.2), one bit per pin.
        const GPSET0: u64 = 0xfe20_001c;
        let deadline = started + Duration::from_secs(20);
        listener.set_nonblocking(true)?;
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    ensure!(
                        Instant::now() < deadline,
                        "QEMU did not connect to the qtest socket"
                    );
                    thread::sleep(Duration::from_millis(20));
                }
                Err(error) => return Err(error).context("accepting QEMU's qtest connection"),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut replies = BufReader::new(stream.try_clone()?);
        let mut writer = stream;
        for pin in &self.gpios_high {
            let address = GPSET0 + u64::from(pin / 32) * 4;
            writeln!(writer, "writel 0x{address:x} 0x{:x}", 1_u32 << (pin % 32))
                .context("writing to the qtest port")?;
            let mut reply = String::new();
            replies
                .read_line(&mut reply)
                .context("reading the qtest reply")?;
            ensure!(
                reply.trim() == "OK",
                "qtest refused the GPIO write: {reply}"
            );
        }
        qmp.write_all(b"{\"execute\":\"cont\"}\n")
            .context("starting the guest (QMP cont)")
    }

    fn wait_for_end(
        &self,
        child: &mut Child,
        events: &mpsc::Receiver<Event>,
        started: Instant,
        qmp: &mut UnixStream,
    ) -> Result<Ending> {
        let deadline = started + self.timeout;
        let mut console_tail = String::new();
        let mut pending = self.qmp_commands.iter();
        let mut next_command = pending.next();
        let mut command_tail = String::new();
        loop {
            if let Some(status) = child.try_wait().context("waiting for QEMU")? {
                return Ok(Ending::Exited(status.code().unwrap_or(-1)));
            }
            let now = Instant::now();
            if now >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(Ending::TimedOut);
            }
            match events.recv_timeout((deadline - now).min(Duration::from_millis(50))) {
                Ok(Event::Console(text)) => {
                    command_tail.push_str(&text);
                    while let Some((trigger, command)) = next_command {
                        let Some(at) = command_tail.find(trigger.as_str()) else {
                            keep_possible_start(&mut command_tail, trigger.len());
                            break;
                        };
                        qmp.write_all(command.as_bytes())
                            .and_then(|()| qmp.write_all(b"\n"))
                            .with_context(|| format!("sending QMP {command}"))?;
                        // The next trigger counts only from here on.
                        command_tail.drain(..at + trigger.len());
                        next_command = pending.next();
                    }
                    if let Some(stop) = &self.stop_text {
                        console_tail.push_str(&text);
                        if console_tail.contains(stop.as_str()) {
                            let _ = child.kill();
                            let _ = child.wait();
                            return Ok(Ending::StopText);
                        }
                        keep_possible_start(&mut console_tail, stop.len());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {}
            }
        }
    }
}

/// Drops the front of `tail`, keeping only what could still be the start
/// of a text `length` bytes long.
fn keep_possible_start(tail: &mut String, length: usize) {
    let keep = tail.len().saturating_sub(length);
    let cut = (keep..=tail.len())
        .find(|&index| tail.is_char_boundary(index))
        .unwrap_or(0);
    tail.drain(..cut);
}

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Console(String),
}

fn spawn_console_reader(
    mut stdout: impl Read + Send + 'static,
    events: mpsc::Sender<Event>,
    echo: bool,
) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut console = Vec::new();
        let mut buffer = [0_u8; 4096];
        loop {
            match stdout.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(read) => {
                    let chunk = &buffer[..read];
                    if echo {
                        let mut out = std::io::stdout();
                        let _ = out.write_all(chunk);
                        let _ = out.flush();
                    }
                    console.extend_from_slice(chunk);
                    let _ =
                        events.send(Event::Console(String::from_utf8_lossy(chunk).into_owned()));
                }
            }
        }
        // The console is text; the PL011 sends CR LF line ends.
        String::from_utf8_lossy(&console).replace("\r\n", "\n")
    })
}

fn connect_qmp(socket: &Path, child: &mut Child, deadline: Instant) -> Result<UnixStream> {
    loop {
        match UnixStream::connect(socket) {
            Ok(mut stream) => {
                stream
                    .write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
                    .context("sending qmp_capabilities")?;
                return Ok(stream);
            }
            Err(error) => {
                if let Some(status) = child.try_wait()? {
                    bail!("QEMU exited before its QMP socket opened ({status})");
                }
                if Instant::now() >= deadline {
                    return Err(error).context("connecting to QEMU's QMP socket");
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Reads QMP until QEMU closes it; returns whether the guest reset and the
/// error replies to commands sent with [`Qemu::qmp_when`].
fn spawn_qmp_reader(stream: UnixStream) -> thread::JoinHandle<(bool, Vec<String>)> {
    thread::spawn(move || {
        let mut guest_reset = false;
        let mut errors = Vec::new();
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            // {"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-reset"}}
            if message["event"] == "SHUTDOWN" && message["data"]["reason"] == "guest-reset" {
                guest_reset = true;
            }
            // {"error": {"class": "GenericError", "desc": "..."}}
            if message.get("error").is_some() {
                errors.push(line);
            }
        }
        (guest_reset, errors)
    })
}
