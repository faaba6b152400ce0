//! Every file in `bad-configs/` is refused at start: exit status 1, and an error naming the
//! field (`# expect:`) with the message (`# message:`) at the top of the file.

#[test]
fn every_bad_config_names_its_field() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-configs");
    liqonet_lab::bad_configs::check_all(env!("CARGO_BIN_EXE_liqonet-route-agent"), &dir, 11, None);
}
