//! AFL target `entries_request`: see [`vkv_fuzz::check_entries_request`].

fn main() {
    vkv_fuzz::run(vkv_fuzz::check_entries_request);
}
