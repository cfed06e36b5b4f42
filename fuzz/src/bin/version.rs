//! AFL target `version`: see [`vkv_fuzz::check_version`].

fn main() {
    vkv_fuzz::run(vkv_fuzz::check_version);
}
