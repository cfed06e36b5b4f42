//! AFL target `sibling_set`: see [`vkv_fuzz::check_sibling_set`].

fn main() {
    vkv_fuzz::run(vkv_fuzz::check_sibling_set);
}
